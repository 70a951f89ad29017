//! A job's log: the steps a handler names and the output lines of its
//! commands, timestamped, stored in Postgres in batches shared by every job of
//! the process (the [`Batcher`]), and published on the job's realtime topic
//! as each batch is written, so a WebSocket client follows it live.
//!
//! Memory and storage are bounded: a job's log holds at most its cap
//! (`BERTH_JOB_LOG_MAX_BYTES`, 5 MiB by default) across attempts; past it one
//! marker line is kept and the rest dropped. Lines are queued without waiting
//! (output arrives on SSH reader threads) and flushed every
//! [`FLUSH_EVERY`], and once more when the attempt ends, before its outcome is
//! recorded.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::batch::Batcher;
use crate::events::{self, RealtimeEvent};

/// Default cap of one job's log.
pub const DEFAULT_MAX_BYTES: u64 = 5 * 1024 * 1024;
/// Marks where a job's log was cut.
pub const TRUNCATED_MARKER: &str = "[berth: log truncated at its cap]";
/// How often queued lines are written and published.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A line is cut to this many bytes.
const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum LogStream {
    /// A step the handler named ("Cloning", "Building").
    Step,
    Stdout,
    Stderr,
}

/// One line of a job's log.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LogLine {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub stream: LogStream,
    pub line: String,
}

struct Entry {
    job_id: Arc<str>,
    line: LogLine,
    truncated: bool,
}

/// Writes the log lines of every job in this process.
#[derive(Clone)]
pub struct LogSink {
    writes: Batcher<Vec<Entry>, ()>,
    max_bytes: u64,
}

impl LogSink {
    pub fn new(pool: PgPool, redis: ConnectionManager, max_bytes: u64) -> Self {
        let writes = Batcher::spawn(64, Duration::from_millis(2), move |batches| {
            let (pool, redis) = (pool.clone(), redis.clone());
            async move {
                let requests = batches.len();
                let entries: Vec<Entry> = batches.into_iter().flatten().collect();
                write(&pool, &entries).await?;
                publish(&redis, entries).await;
                Ok(vec![(); requests])
            }
        });
        Self { writes, max_bytes }
    }

    /// The log of one attempt of `job_id`, whose log already holds
    /// `bytes_so_far` and whose last line is `last_seq`.
    pub fn open(&self, job_id: &str, last_seq: i64, bytes_so_far: i64) -> JobLog {
        let remaining = i64::try_from(self.max_bytes).unwrap_or(i64::MAX) - bytes_so_far;
        JobLog(Arc::new(Inner {
            job_id: job_id.into(),
            pending: Mutex::new(Vec::new()),
            seq: AtomicI64::new(last_seq),
            remaining: AtomicI64::new(remaining),
            cut: AtomicBool::new(remaining <= 0),
        }))
    }

    /// Flushes `log` every [`FLUSH_EVERY`] until `done` fires, then once more.
    pub async fn follow(&self, log: JobLog, done: CancellationToken) {
        loop {
            let stop = tokio::select! {
                () = done.cancelled() => true,
                () = tokio::time::sleep(FLUSH_EVERY) => false,
            };
            let entries = log.take();
            if !entries.is_empty()
                && let Err(e) = self.writes.call(entries).await
            {
                tracing::warn!(error = %e, "job log lines lost: cannot write them");
            }
            if stop {
                return;
            }
        }
    }
}

async fn write(pool: &PgPool, entries: &[Entry]) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let job_ids: Vec<&str> = entries.iter().map(|e| &*e.job_id).collect();
    let seqs: Vec<i64> = entries.iter().map(|e| e.line.seq).collect();
    let ats: Vec<DateTime<Utc>> = entries.iter().map(|e| e.line.at).collect();
    let streams: Vec<LogStream> = entries.iter().map(|e| e.line.stream).collect();
    let lines: Vec<&str> = entries.iter().map(|e| e.line.line.as_str()).collect();
    let truncated: Vec<bool> = entries.iter().map(|e| e.truncated).collect();
    sqlx::query!(
        "WITH e AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::text[], \
                                          $5::text[], $6::bool[]) AS e(job_id, seq, at, stream, line, cut)), \
              ins AS (INSERT INTO job_logs (job_id, seq, at, stream, line) \
                      SELECT job_id, seq, at, stream, line FROM e ON CONFLICT DO NOTHING) \
         UPDATE jobs j SET log_seq = GREATEST(j.log_seq, m.seq), log_bytes = j.log_bytes + m.bytes, \
                           log_truncated = j.log_truncated OR m.cut \
         FROM (SELECT job_id, max(seq) AS seq, sum(octet_length(line)) AS bytes, bool_or(cut) AS cut \
               FROM e GROUP BY job_id) m \
         WHERE j.id = m.job_id",
        &job_ids as &[&str],
        &seqs as &[i64],
        &ats as &[DateTime<Utc>],
        &streams as &[LogStream],
        &lines as &[&str],
        &truncated as &[bool],
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// One event per job of the batch, on the job's topic.
async fn publish(redis: &ConnectionManager, entries: Vec<Entry>) {
    let mut by_job: Vec<(Arc<str>, Vec<LogLine>)> = Vec::new();
    for entry in entries {
        match by_job.iter_mut().find(|(id, _)| *id == entry.job_id) {
            Some((_, lines)) => lines.push(entry.line),
            None => by_job.push((entry.job_id, vec![entry.line])),
        }
    }
    for (job_id, lines) in by_job {
        let event = RealtimeEvent::JobLog {
            job_id: job_id.to_string(),
            lines,
        };
        events::publish_topic(redis, &events::job_topic(&job_id), &event).await;
    }
}

struct Inner {
    job_id: Arc<str>,
    pending: Mutex<Vec<Entry>>,
    seq: AtomicI64,
    remaining: AtomicI64,
    cut: AtomicBool,
}

/// The log of the job a handler runs. Cheap to clone; appending never waits.
#[derive(Clone)]
pub struct JobLog(Arc<Inner>);

impl std::fmt::Debug for JobLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLog")
            .field("job_id", &self.0.job_id)
            .finish_non_exhaustive()
    }
}

impl JobLog {
    /// Names the step the job is at.
    pub fn step(&self, name: &str) {
        self.push(LogStream::Step, name);
    }

    /// One line a command printed.
    pub fn line(&self, stream: LogStream, text: &str) {
        self.push(stream, text);
    }

    fn push(&self, stream: LogStream, text: &str) {
        let inner = &self.0;
        if inner.cut.load(Ordering::Relaxed) {
            return;
        }
        let mut end = text.len().min(MAX_LINE_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &text[..end];
        let left = inner
            .remaining
            .fetch_sub(text.len() as i64, Ordering::Relaxed);
        let (stream, text, truncated) = if left >= text.len() as i64 {
            (stream, text, false)
        } else if !inner.cut.swap(true, Ordering::Relaxed) {
            (LogStream::Step, TRUNCATED_MARKER, true)
        } else {
            return;
        };
        let line = LogLine {
            seq: inner.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at: Utc::now(),
            stream,
            line: text.to_owned(),
        };
        inner
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Entry {
                job_id: inner.job_id.clone(),
                line,
                truncated,
            });
    }

    fn take(&self) -> Vec<Entry> {
        std::mem::take(
            &mut *self
                .0
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// A page of a job's log: lines after `after`, oldest first.
pub async fn read(
    pool: &PgPool,
    job_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<LogLine>, sqlx::Error> {
    sqlx::query_as!(
        LogLine,
        r#"SELECT seq, at, stream AS "stream: LogStream", line FROM job_logs
           WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"#,
        job_id,
        after,
        limit,
    )
    .fetch_all(pool)
    .await
}

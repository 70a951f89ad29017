//! Prometheus metrics. HTTP metrics are counted in this process; job metrics are
//! derived from Postgres at scrape time (APALIS.md: apalis' own metrics are not
//! usable), so every api replica reports the same job numbers.

use std::collections::BTreeMap;

use berth_jobs::store::{self, DURATION_BUCKETS};
use berth_jobs::{JobState, Queue};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use sqlx::PgPool;

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "berth_http_requests_total",
                "HTTP requests by route template, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "berth_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "method"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(http_requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(http_duration.clone()))
            .expect("registered once");
        Self {
            registry,
            http_requests,
            http_duration,
        }
    }

    /// `route` is a route template or `unmatched`; methods outside the
    /// standard set fold into `OTHER`, so no client can mint label values.
    pub fn observe_request(
        &self,
        route: &str,
        method: &str,
        status: axum::http::StatusCode,
        seconds: f64,
    ) {
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
            _ => "OTHER",
        };
        self.http_requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
        self.http_duration
            .with_label_values(&[route, method])
            .observe(seconds);
    }

    /// The text exposition of every metric.
    pub async fn render(&self, pool: &PgPool) -> String {
        let mut families = self.registry.gather();
        let database_up = match store::stats(pool).await {
            Ok(stats) => {
                families.extend(job_families(&stats));
                1.0
            }
            Err(e) => {
                tracing::warn!(error = %e, "job metrics unavailable: database query failed");
                0.0
            }
        };
        families.push(family(
            "berth_metrics_database_up",
            "1 when job metrics could be read from Postgres at this scrape",
            MetricType::GAUGE,
            vec![gauge_metric(&[], database_up)],
        ));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding of valid families");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect()
}

fn gauge_metric(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::from_gauge(gauge);
    metric.set_label(labels(pairs));
    metric
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

/// Per kind and terminal state: jobs per duration bucket (width_bucket index) and
/// the duration sum.
#[derive(Default)]
struct Finished {
    per_bucket: BTreeMap<i32, u64>,
    sum: f64,
}

fn job_families(stats: &[store::JobStat]) -> Vec<MetricFamily> {
    let mut depth: BTreeMap<(String, String), i64> = BTreeMap::new();
    for queue in Queue::ALL {
        for state in [JobState::Queued, JobState::Running] {
            depth.insert((queue.name().to_owned(), state.name().to_owned()), 0);
        }
    }
    let mut finished: BTreeMap<(String, String), Finished> = BTreeMap::new();
    for kind in berth_jobs::kinds::CATALOG {
        for state in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            finished.insert(
                (kind.name.to_owned(), state.name().to_owned()),
                Finished::default(),
            );
        }
    }
    for stat in stats {
        if stat.bucket < 0 {
            let queue = stat.queue.clone().unwrap_or_default();
            *depth.entry((queue, stat.state.clone())).or_default() += stat.jobs;
        } else {
            let key = (stat.kind.clone(), stat.state.clone());
            let entry = finished.entry(key).or_default();
            *entry.per_bucket.entry(stat.bucket).or_default() += stat.jobs as u64;
            entry.sum += stat.duration_seconds_sum;
        }
    }

    let depth_metrics = depth
        .iter()
        .map(|((queue, state), n)| gauge_metric(&[("queue", queue), ("state", state)], *n as f64))
        .collect();

    let mut counter_metrics = Vec::new();
    let mut histogram_metrics = Vec::new();
    for ((kind, outcome), data) in &finished {
        let total: u64 = data.per_bucket.values().sum();
        let mut counter = Counter::default();
        counter.set_value(total as f64);
        let mut metric = Metric::default();
        metric.set_label(labels(&[("kind", kind), ("outcome", outcome)]));
        metric.set_counter(counter);
        counter_metrics.push(metric);

        if total == 0 {
            continue;
        }
        // width_bucket index i counts durations in [B[i-1], B[i]), index 0 those
        // below B[0]; so "le B[k]" is the sum of indexes 0..=k.
        let mut cumulative = 0u64;
        let buckets = DURATION_BUCKETS
            .iter()
            .enumerate()
            .map(|(k, bound)| {
                cumulative += data.per_bucket.get(&(k as i32)).copied().unwrap_or(0);
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut histogram = Histogram::default();
        histogram.set_sample_count(total);
        histogram.set_sample_sum(data.sum);
        histogram.set_bucket(buckets);
        let mut metric = Metric::default();
        metric.set_label(labels(&[("kind", kind), ("outcome", outcome)]));
        metric.set_histogram(histogram);
        histogram_metrics.push(metric);
    }

    let mut families = vec![
        family(
            "berth_queue_jobs",
            "Jobs waiting or running, per queue and state",
            MetricType::GAUGE,
            depth_metrics,
        ),
        family(
            "berth_jobs_finished_total",
            "Jobs finished, per kind and outcome",
            MetricType::COUNTER,
            counter_metrics,
        ),
    ];
    if !histogram_metrics.is_empty() {
        families.push(family(
            "berth_job_duration_seconds",
            "Duration of a job's last attempt, per kind and outcome",
            MetricType::HISTOGRAM,
            histogram_metrics,
        ));
    }
    families
}

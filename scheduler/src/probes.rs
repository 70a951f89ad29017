//! One probe per validated server per tick. Each probe carries the dedupe key
//! `probe:<server>`: while one is queued or running, enqueueing another
//! returns it instead, so probes of a slow server never overlap or pile up.

use berth_jobs::store::NewJob;
use berth_jobs::{JobClient, ServerProbe};
use sqlx::PgPool;
use uuid::Uuid;

pub async fn enqueue_probes(pool: &PgPool, jobs: &JobClient) -> anyhow::Result<usize> {
    let servers: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT id, owner_user_id FROM servers WHERE host_key IS NOT NULL")
            .fetch_all(pool)
            .await?;
    // Enqueued concurrently: JobClient batches them into few statements.
    let enqueued = futures::future::join_all(servers.iter().map(|(server, owner)| {
        jobs.enqueue(
            NewJob::new(ServerProbe { server_id: *server })
                .owner(*owner)
                .server(*server)
                .dedupe_key(format!("probe:{server}")),
        )
    }))
    .await;
    let mut created = 0;
    for result in enqueued {
        if result?.created() {
            created += 1;
        }
    }
    Ok(created)
}

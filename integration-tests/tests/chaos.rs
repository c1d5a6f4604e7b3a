//! Chaos: 200 streamed requests while mocker workers are SIGKILLed and restarted at random
//! (seeded). Every request either completes with exactly the right tokens or ends with an
//! explicit error within its deadline; none hangs. Both are counted.

use ferrite_integration_tests::cluster::{Cluster, ClusterSpec, mock_expected};
use std::time::{Duration, Instant};

/// xorshift64*: a seeded schedule without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const REQUESTS: usize = 200;
const CONCURRENCY: usize = 24;
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_every_request_completes_exactly_or_fails_explicitly() -> anyhow::Result<()> {
    let workers = 3;
    let mut c = Cluster::start(ClusterSpec::mocker(workers, "2")).await?;
    let (client, url) = (c.client.clone(), c.url.clone());
    let load = tokio::spawn(async move {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let mut tasks = Vec::new();
        for i in 0..REQUESTS {
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            let (client, url) = (client.clone(), url.clone());
            // 60–250 tokens at ~3 ms a step: each request streams for 0.2–0.8 s.
            let n = 60 + (i as u32 * 37) % 190;
            tasks.push(tokio::spawn(async move {
                let start = Instant::now();
                let r = tokio::time::timeout(
                    DEADLINE,
                    ferrite_integration_tests::cluster::stream_mock(client, url, i, n),
                )
                .await;
                drop(permit);
                (i, n, r, start.elapsed())
            }));
        }
        futures::future::join_all(tasks).await
    });
    // Kill and restart workers while the requests run: every 700–1500 ms one worker is
    // SIGKILLed and started again 500 ms later, so at least two are up most of the time.
    let mut rng = Rng(0x5eed_c4a0_5eed_0001_u64);
    let mut kills = 0;
    tokio::pin!(load);
    let results = loop {
        let pause = Duration::from_millis(700 + rng.below(800));
        tokio::select! {
            r = &mut load => break r?,
            _ = tokio::time::sleep(pause) => {
                let w = rng.below(workers as u64) as usize;
                c.kill_worker(w);
                kills += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                c.restart_worker(w)?;
            }
        }
    };
    let (mut exact, mut errored) = (0, 0);
    for r in results {
        let (i, n, r, took) = r?;
        match r {
            Err(_) => panic!("request {i} hung past its {DEADLINE:?} deadline"),
            Ok(Ok((ids, finish))) => {
                assert_eq!(finish, "length", "request {i}");
                assert!(
                    ids == mock_expected(i, n),
                    "request {i} completed with missing, repeated or wrong tokens"
                );
                exact += 1;
            }
            Ok(Err(e)) => {
                eprintln!("request {i} failed explicitly after {took:?}: {e:#}");
                errored += 1;
            }
        }
    }
    let m = c.frontend_metrics().await?;
    let migrations: f64 = m
        .lines()
        .filter(|l| l.starts_with("ferrite_frontend_migrations_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "chaos: {kills} worker kills, {migrations} migrations; {exact} requests completed exactly, {errored} failed explicitly"
    );
    assert!(
        migrations >= 1.0,
        "no request was migrated: the kills missed the load"
    );
    assert!(kills >= 3, "the load ended before the chaos began");
    assert_eq!(exact + errored, REQUESTS);
    assert!(
        exact >= REQUESTS * 9 / 10,
        "only {exact} of {REQUESTS} requests completed"
    );
    Ok(())
}

//! How fast the pool's dispatch hands out work: 10,000 queued tasks on
//! 200 datastores of 100 hosts, taken by 50 in-process movers (each a
//! thread with its own connection, reaching the datastores of two hosts,
//! claiming as many tasks as it has streams (4), every task reported done
//! as soon as it is taken), with the default
//! limits of one running task per datastore and two per host. Prints the time to
//! dispatch them all, the claims per second, and the database's bytes
//! per task. `tools/bench coordinator` starts PostgreSQL and runs it.
//!
//! Usage: dispatch_bench POSTGRES_URL [TASKS] [MOVERS]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_coordinator::dispatch::{self, Outcome};
use strata_coordinator::inventory::{self, MoverSpec, Source};
use strata_coordinator::{db, queue};

/// Time spent in claims (waiting for the dispatch lock included), and
/// how many were asked for (empty ones too).
static CLAIM_MICROS: AtomicU64 = AtomicU64::new(0);
static CLAIMS: AtomicU64 = AtomicU64::new(0);
/// Time spent in reports.
static REPORT_MICROS: AtomicU64 = AtomicU64::new(0);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).ok_or("usage: dispatch_bench POSTGRES_URL [TASKS] [MOVERS]")?;
    let tasks: usize = args.get(2).map_or(Ok(10_000), |s| s.parse())?;
    let movers: usize = args.get(3).map_or(Ok(50), |s| s.parse())?;
    let (hosts, datastores) = (100, 200);

    let mut client = db::connect(url)?;
    db::migrate(&mut client)?;
    client.batch_execute("TRUNCATE task_runs, tasks, jobs, sources, movers CASCADE")?;
    let mut names = Vec::with_capacity(tasks);
    for i in 0..tasks {
        let ds = i % datastores;
        let source = Source {
            name: format!("vm{i:05}"),
            kind: "vm".into(),
            path: format!("/vmfs/volumes/ds{ds}/vm{i:05}"),
            host: format!("esx{}", ds % hosts),
            datastore: format!("ds{ds}"),
            size_hint: (i as i64 * 7919) % 100_000,
            priority: (i % 3) as i32,
        };
        inventory::add_source(&mut client, &source)?;
        names.push(source.name);
    }
    for m in 0..movers {
        // Each mover reaches the datastores of its own host and of every
        // host `movers` further on, so every task has a mover and the
        // movers share them evenly.
        let reach: Vec<String> = (0..datastores)
            .filter(|ds| (ds % hosts) % movers == m)
            .map(|ds| format!("ds{ds}"))
            .collect();
        inventory::register_mover(
            &mut client,
            &MoverSpec {
                name: format!("mover{m:02}"),
                host: format!("esx{}", m % hosts),
                cores: 4,
                memory_mib: 16_384,
                streams: None,
                datastores: reach,
                transports: vec!["direct".into()],
                maintenance: false,
            },
        )?;
    }
    queue::backup_now(&mut client, &names)?;

    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut threads = Vec::new();
    for m in 0..movers {
        let (url, done) = (url.clone(), Arc::clone(&done));
        threads.push(std::thread::spawn(move || -> Result<u64, String> {
            let mut db = db::connect(&url).map_err(|e| e.to_string())?;
            let name = format!("mover{m:02}");
            let row = db
                .query_one("SELECT host, datastores FROM movers WHERE name = $1", &[&name])
                .map_err(|e| e.to_string())?;
            let (host, reach): (String, Vec<String>) = (row.get(0), row.get(1));
            let (claimer, reporter, streams) = (
                dispatch::Claimer::prepare(&mut db).map_err(|e| e.to_string())?,
                dispatch::Reporter::prepare(&mut db).map_err(|e| e.to_string())?,
                inventory::streams_for(4, 16_384),
            );
            let mut mine = 0;
            let mut idle = 0;
            while done.load(Ordering::Relaxed) < tasks as u64 && idle < 200 {
                let asked = Instant::now();
                let claimed = claimer
                    .claim(&mut db, &name, &host, &reach, Duration::from_secs(60), streams)
                    .map_err(|e| e.to_string())?;
                CLAIM_MICROS.fetch_add(asked.elapsed().as_micros() as u64, Ordering::Relaxed);
                CLAIMS.fetch_add(1, Ordering::Relaxed);
                if claimed.is_empty() {
                    // Nothing for it now: a real mover waits for a
                    // notification or its next poll.
                    idle += 1;
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                idle = 0;
                for claimed in &claimed {
                    let reporting = Instant::now();
                    reporter.done(&mut db, &name, claimed, &Outcome::default()).map_err(|e| e.to_string())?;
                    REPORT_MICROS.fetch_add(reporting.elapsed().as_micros() as u64, Ordering::Relaxed);
                    done.fetch_add(1, Ordering::Relaxed);
                    mine += 1;
                }
            }
            Ok(mine)
        }));
    }
    let mut per_mover = Vec::new();
    for t in threads {
        per_mover.push(t.join().map_err(|_| "a mover thread panicked")??);
    }
    let elapsed = started.elapsed();
    let dispatched = done.load(Ordering::Relaxed);
    let bytes: i64 = client
        .query_one(
            "SELECT pg_total_relation_size('tasks') + pg_total_relation_size('task_runs')",
            &[],
        )?
        .get(0);
    per_mover.sort_unstable();
    eprintln!(
        "{} claims asked, {:.2} ms each on average (lock wait included); reports {:.2} ms each",
        CLAIMS.load(Ordering::Relaxed),
        CLAIM_MICROS.load(Ordering::Relaxed) as f64 / 1000.0 / CLAIMS.load(Ordering::Relaxed).max(1) as f64,
        REPORT_MICROS.load(Ordering::Relaxed) as f64 / 1000.0 / dispatched.max(1) as f64
    );
    println!(
        "dispatched {dispatched} of {tasks} tasks to {movers} movers in {:.2} s ({:.0} claims/s); \
         tasks per mover min {} median {} max {}; {} bytes per task in tasks and task_runs",
        elapsed.as_secs_f64(),
        dispatched as f64 / elapsed.as_secs_f64(),
        per_mover[0],
        per_mover[per_mover.len() / 2],
        per_mover[per_mover.len() - 1],
        bytes / tasks.max(1) as i64
    );
    Ok(())
}

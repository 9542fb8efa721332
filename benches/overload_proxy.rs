//! Load shedding through the proxy: goodput, refusal latency and the adaptive limit of a real
//! weir (`App` on 127.0.0.1 port 0) over a real upstream. These are the figures the integration
//! tests used to bound; `tests/it/resilience.rs` now checks only the wiring.
//!
//! - `goodput`: an upstream that answers in 50 ms, behind `max_in_flight = 8`, `queue = 8`,
//!   `queue_timeout = "20ms"` (nominal capacity 160 req/s). An open-loop arrival process (a
//!   1 ms tick that sends what is due, whatever came back) runs at 0.5× capacity for 2 s, whose
//!   mean call time gives the capacity measured in this run (8 / mean), then at 3× capacity for
//!   3 s. Of the overload phase: goodput as a fraction of the measured capacity, refusal
//!   latency (median and p90 as multiples of the queue timeout, and the fastest), the share of
//!   refusals made at once for the expected wait (`reason="queue_wait"`), and whether every
//!   refused request stayed away from the upstream.
//! - `adaptive`: `adaptive = true`, ceiling 32, floor 2, no queue; 16 clients in a closed loop
//!   on an upstream that answers in 5 ms until it has served 2500 requests, then in 60 ms. Of
//!   the run: the client round trip after the slowdown as a multiple of the one before, the
//!   limit before it as a fraction of the ceiling, how long after it the limit first fell, and
//!   the lowest limit in the 5 s after.
//!
//! Run with `cargo bench --bench overload_proxy` (about 15 s), or one case by name:
//! `cargo bench --bench overload_proxy -- adaptive`. It prints each figure, PASS or MISS
//! against its target, and exits 1 when a target is missed. Weir, the upstream, the client and
//! the TOML builder are the integration tests' own `tests/it/support`, compiled in by path.

// A bench reports on stdout and fails loudly on a broken setup.
#![allow(clippy::expect_used, clippy::print_stdout, clippy::panic)]

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use support::{Client, Toml, Upstream, Weir, scrape, status_entry, status_json};

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |case: &str| only.is_empty() || only.iter().any(|o| o == case);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Report::default();
    rt.block_on(async {
        if wanted("goodput") {
            goodput(&mut report).await;
        }
        if wanted("adaptive") {
            adaptive(&mut report).await;
        }
    });
    if report.missed > 0 {
        println!("{} target(s) missed", report.missed);
        std::process::exit(1);
    }
}

// === goodput ===

/// Slots of the `goodput` upstream.
const SLOTS: u32 = 8;
/// How long the `goodput` upstream takes to answer.
const SERVICE: Duration = Duration::from_millis(50);
/// The queue timeout of the `goodput` upstream.
const QUEUE_TIMEOUT: Duration = Duration::from_millis(20);
const HALF: Duration = Duration::from_secs(2);
const OVER: Duration = Duration::from_secs(3);

/// One request's fate: how long it took, and whether it was served (else refused as
/// `overloaded`; anything else is counted apart).
#[derive(Clone, Copy)]
struct Sample {
    took: Duration,
    verdict: Verdict,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Served,
    Overloaded,
    Other,
}

async fn goodput(report: &mut Report) {
    let up = Upstream::http1().delay(SERVICE).start().await;
    let cfg = Toml::one_route("bench", "bench-up", &[up.addr()])
        .set("shed.max_in_flight", SLOTS)
        .set("shed.queue", 8)
        .set("shed.queue_timeout", "20ms")
        .set("retry.max_retries", 0)
        .set("breaker.mode", "off")
        .set("outlier.mode", "off");
    let weir = Weir::start(cfg).await;
    let nominal = f64::from(SLOTS) / SERVICE.as_secs_f64();

    let half = offer(weir.addr(), 0.5 * nominal, HALF).await;
    let shed = |m: &support::Scrape, reason: &str| {
        m.sum(
            "weir_shed_total",
            &[("upstream", "bench-up"), ("reason", reason)],
        )
    };
    let before = scrape(weir.admin()).await;
    let over = offer(weir.addr(), 3.0 * nominal, OVER).await;
    let after = scrape(weir.admin()).await;

    let took = |s: &[Sample], v: Verdict| -> Vec<Duration> {
        let mut t: Vec<Duration> = s
            .iter()
            .filter(|x| x.verdict == v)
            .map(|x| x.took)
            .collect();
        t.sort_unstable();
        t
    };
    let half_served = took(&half, Verdict::Served);
    let mean =
        half_served.iter().sum::<Duration>() / u32::try_from(half_served.len().max(1)).unwrap_or(1);
    let measured = f64::from(SLOTS) / mean.as_secs_f64();
    let served = took(&over, Verdict::Served);
    let refused = took(&over, Verdict::Overloaded);
    let other = over.iter().filter(|s| s.verdict == Verdict::Other).count()
        + half.iter().filter(|s| s.verdict == Verdict::Other).count();
    let goodput = served.len() as f64 / OVER.as_secs_f64() / measured;
    let median = quantile(&refused, 0.5);
    let p90 = quantile(&refused, 0.9);
    let fastest = refused.first().copied().unwrap_or_default();
    let waits = shed(&after, "queue_wait") - shed(&before, "queue_wait");
    let wait_share = waits / refused.len().max(1) as f64;
    let total_served = half_served.len() + served.len();

    println!(
        "goodput: {SLOTS} slots, service {} ms, queue 8 / {} ms; capacity {nominal:.0} req/s \
         nominal, {measured:.0} req/s measured (mean call {:.2} ms at half load, {} requests)",
        ms(SERVICE),
        ms(QUEUE_TIMEOUT),
        ms(mean),
        half.len()
    );
    println!(
        "overload (3x, {} s): {} requests, {} served, {} refused ({:.3})",
        OVER.as_secs(),
        over.len(),
        served.len(),
        refused.len(),
        refused.len() as f64 / over.len().max(1) as f64
    );
    report.check(
        &format!("  goodput            {goodput:.3} of measured capacity"),
        "target >= 0.90",
        goodput >= 0.90,
    );
    report.check(
        &format!(
            "  refusal median     {:.2} ms = {:.2}x the queue timeout",
            ms(median),
            ratio(median, QUEUE_TIMEOUT)
        ),
        "target < 1x",
        !refused.is_empty() && median < QUEUE_TIMEOUT,
    );
    report.check(
        &format!(
            "  refusal p90        {:.2} ms = {:.2}x the queue timeout",
            ms(p90),
            ratio(p90, QUEUE_TIMEOUT)
        ),
        "target < 5x",
        !refused.is_empty() && p90 < QUEUE_TIMEOUT * 5,
    );
    report.check(
        &format!("  fastest refusal    {:.2} ms", ms(fastest)),
        "target < 10 ms",
        !refused.is_empty() && fastest < Duration::from_millis(10),
    );
    report.check(
        &format!("  refused for the expected wait (queue_wait) {wait_share:.3} of refusals"),
        "target > 0.50",
        wait_share > 0.5,
    );
    report.check(
        &format!(
            "  upstream saw {} requests for {total_served} served, {other} other replies",
            up.hits()
        ),
        "target: equal, none other",
        up.hits() == total_served && other == 0,
    );
    weir.stop().await;
}

/// Sends `rate` requests per second for `dur`, open loop over 8 pooled clients, and returns
/// every request's fate once all are answered.
async fn offer(addr: SocketAddr, rate: f64, dur: Duration) -> Vec<Sample> {
    let clients: Vec<Client> = (0..8).map(|_| Client::h1()).collect();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut tasks = Vec::new();
    loop {
        tick.tick().await;
        let now = start.elapsed();
        if now >= dur {
            break;
        }
        // Arrivals due by now; the tick only batches them.
        let due = (now.as_secs_f64() * rate) as usize;
        while tasks.len() < due {
            let c = clients[tasks.len() % clients.len()].clone();
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let verdict = match c.try_get(addr, "/").await {
                    Ok(r) if r.status == 200 => Verdict::Served,
                    Ok(r) if r.status == 503 && r.header("x-weir-error") == Some("overloaded") => {
                        Verdict::Overloaded
                    }
                    _ => Verdict::Other,
                };
                Sample {
                    took: t0.elapsed(),
                    verdict,
                }
            }));
        }
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

// === adaptive ===

const CEILING: u32 = 32;
/// Requests served fast before the upstream slows down.
const FAST: usize = 2_500;
const FAST_DELAY: Duration = Duration::from_millis(5);
const SLOW_DELAY: Duration = Duration::from_millis(60);
/// How long the limit is watched after the slowdown.
const WATCH: Duration = Duration::from_secs(5);
/// The latest the limit may first fall after the slowdown.
const FALL_WITHIN: Duration = Duration::from_secs(10);

async fn adaptive(report: &mut Report) {
    let up = Upstream::http1().delay(FAST_DELAY).start().await;
    let cfg = Toml::one_route("bench-adaptive", "bench-adaptive-up", &[up.addr()])
        .set("shed.adaptive", true)
        .set("shed.min_limit", 2)
        .set("shed.max_in_flight", CEILING)
        .set("shed.queue", 0);
    let weir = Weir::start(cfg).await;
    let (addr, admin) = (weir.addr(), weir.admin());
    let limit = || async move {
        let status = status_json(admin).await;
        status_entry(&status, "upstreams", "bench-adaptive-up")["shed"]["limit"]
            .as_u64()
            .and_then(|l| u32::try_from(l).ok())
            .expect("shed.limit in /status.json")
    };
    let start = limit().await;

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = Client::h1();
                let mut trips = Vec::new();
                while !stop.load(SeqCst) {
                    let t0 = Instant::now();
                    let served = c.try_get(addr, "/").await.is_ok_and(|r| r.status == 200);
                    trips.push((t0, t0.elapsed(), served));
                }
                trips
            })
        })
        .collect();
    let began = Instant::now();
    while up.hits() < FAST && began.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fast_took = began.elapsed();
    let before = limit().await;
    up.set_delay(SLOW_DELAY);
    let slowed = Instant::now();
    let mut lowest = before;
    let mut fell_after = None;
    while slowed.elapsed() < WATCH || (fell_after.is_none() && slowed.elapsed() < FALL_WITHIN) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = limit().await;
        if now < before && fell_after.is_none() {
            fell_after = Some(slowed.elapsed());
        }
        if slowed.elapsed() <= WATCH {
            lowest = lowest.min(now);
        }
    }
    stop.store(true, SeqCst);
    let mut trips = Vec::new();
    for w in workers {
        trips.extend(w.await.expect("client task"));
    }
    // The mean round trip of the requests served from `from` to `to`, and the share refused.
    let phase = |from: Instant, to: Instant| {
        let within: Vec<_> = trips
            .iter()
            .filter(|(at, _, _)| *at >= from && *at < to)
            .collect();
        let served: Vec<Duration> = within
            .iter()
            .filter(|(_, _, ok)| *ok)
            .map(|(_, took, _)| *took)
            .collect();
        let mean =
            served.iter().sum::<Duration>() / u32::try_from(served.len().max(1)).unwrap_or(1);
        let refused = 1.0 - served.len() as f64 / within.len().max(1) as f64;
        (mean, refused)
    };
    // The fast phase's second half (the first includes connection set-up), and the slow phase
    // from one slow answer after the switch (requests in flight at it were still fast).
    let (fast_rtt, fast_refused) = phase(began + fast_took / 2, slowed);
    let (slow_rtt, slow_refused) = phase(slowed + SLOW_DELAY, Instant::now());

    println!(
        "adaptive: ceiling {CEILING}, floor 2, 16 clients; upstream {} ms for {FAST} requests \
         ({:.2} s), then {} ms",
        ms(FAST_DELAY),
        fast_took.as_secs_f64(),
        ms(SLOW_DELAY)
    );
    println!(
        "  served round trip  {:.2} ms fast, {:.2} ms slow = {:.1}x; refused {fast_refused:.3} \
         fast, {slow_refused:.3} slow",
        ms(fast_rtt),
        ms(slow_rtt),
        ratio(slow_rtt, fast_rtt)
    );
    report.check(
        &format!(
            "  limit before       {before} = {:.2} of the ceiling (started at {start})",
            f64::from(before) / f64::from(CEILING)
        ),
        "target: fast phase reached",
        up.hits() >= FAST && start == CEILING,
    );
    report.check(
        &format!(
            "  first fall         {}",
            fell_after.map_or("never".to_owned(), |t| format!(
                "{:.2} s after the slowdown",
                t.as_secs_f64()
            ))
        ),
        &format!("target <= {} s", FALL_WITHIN.as_secs()),
        fell_after.is_some(),
    );
    println!(
        "  lowest within {} s {lowest} = {:.2} of the ceiling",
        WATCH.as_secs(),
        f64::from(lowest) / f64::from(CEILING)
    );
    weir.stop().await;
}

// === helpers ===

/// Figures printed so far, and how many missed their target.
#[derive(Default)]
struct Report {
    missed: usize,
}

impl Report {
    /// Prints `figure`, its `target` and PASS or MISS.
    fn check(&mut self, figure: &str, target: &str, pass: bool) {
        if !pass {
            self.missed += 1;
        }
        println!("{figure}  {target}  {}", if pass { "PASS" } else { "MISS" });
    }
}

/// The `q` quantile of sorted `xs` (zero when empty).
fn quantile(xs: &[Duration], q: f64) -> Duration {
    let at = ((xs.len() as f64 * q) as usize).min(xs.len().saturating_sub(1));
    xs.get(at).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

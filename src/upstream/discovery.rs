//! DNS discovery: resolves an upstream's `dns` name now and every `dns_refresh`, and hands each
//! good answer (sorted, deduplicated `ip:port` authorities) to whoever owns the endpoint set.
//!
//! Position: off the request path; one task per upstream with `dns`, writing the endpoints that
//! the request path reads. Config: `upstreams.<name>.dns`, `dns_refresh`, `dns_servers`.
//! Metrics: `weir_dns_resolutions_total{upstream,result}`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use http::uri::Authority;
use tokio_util::sync::CancellationToken;

use crate::error::BoxError;
use crate::metrics::{DNS_RESOLUTIONS_TOTAL, Metrics};

/// Resolves names to addresses. Implemented by [`HickoryResolver`]; tests use fakes.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses `host` resolves to now, in any order, possibly with duplicates. `host` is
    /// a bare name or IP literal (no port, no brackets). An error names `host`.
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, ResolveError>>;
}

/// Why a name did not resolve to a usable set of addresses, or a resolver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup failed: no such name, no address record, a server failure, no server
    /// reachable.
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        /// The name looked up.
        host: String,
        /// What the resolver reported.
        #[source]
        source: BoxError,
    },
    /// The answer held no address.
    #[error("cannot resolve {host}: the answer holds no address")]
    NoAddresses {
        /// The name looked up.
        host: String,
    },
    /// No answer came within the time limit of one resolution.
    #[error("cannot resolve {host}: no answer within {}s", after.as_secs())]
    Timeout {
        /// The name looked up.
        host: String,
        /// The limit that expired.
        after: Duration,
    },
    /// The target has no port, so no endpoint can be made of its addresses.
    #[error("cannot resolve {target}: expected host:port")]
    NoPort {
        /// The target as given.
        target: String,
    },
    /// The resolver could not be built (system configuration unreadable, no servers given).
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(#[source] BoxError),
}

/// The hickory stub resolver, over the system configuration or over explicit name servers.
///
/// It keeps no cache: every resolution asks the servers, so `dns_refresh` alone (not the
/// records' TTL) decides how soon a change is seen. Cheap to clone (clones share connections).
#[derive(Clone, Debug)]
pub struct HickoryResolver {
    inner: TokioResolver,
}

// === impl HickoryResolver ===

impl HickoryResolver {
    /// A resolver over the system configuration (`/etc/resolv.conf`: name servers, search
    /// domains, `ndots`, timeouts) that also reads the hosts file. This is what an upstream
    /// without `dns_servers` uses.
    pub fn system() -> Result<Self, ResolveError> {
        let mut builder =
            TokioResolver::builder_tokio().map_err(|e| ResolveError::Setup(Box::new(e)))?;
        no_cache(builder.options_mut());
        let inner = builder
            .build()
            .map_err(|e| ResolveError::Setup(Box::new(e)))?;
        Ok(Self { inner })
    }

    /// A resolver that asks only `servers` (`ip:port`, over UDP, and TCP for truncated
    /// answers), in the given order of preference: no search domains, no hosts file, default
    /// timeouts (5 s per try, 2 tries). This is what `dns_servers` configures. An error if
    /// `servers` is empty.
    pub fn with_servers(servers: &[SocketAddr]) -> Result<Self, ResolveError> {
        if servers.is_empty() {
            return Err(ResolveError::Setup("no DNS server given".into()));
        }
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        );
        let options = builder.options_mut();
        options.use_hosts_file = ResolveHosts::Never;
        no_cache(options);
        let inner = builder
            .build()
            .map_err(|e| ResolveError::Setup(Box::new(e)))?;
        Ok(Self { inner })
    }
}

impl Resolve for HickoryResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, ResolveError>> {
        Box::pin(async move {
            match self.inner.lookup_ip(host).await {
                Ok(lookup) => Ok(lookup.iter().collect()),
                Err(e) => Err(ResolveError::Lookup {
                    host: host.to_owned(),
                    source: Box::new(e),
                }),
            }
        })
    }
}

// === the loop ===

/// The discovery loop of upstream `upstream`.
///
/// Resolves `target` (`host:port`) at once, then again `refresh` after each resolution ends.
/// After each good answer it calls `publish` with the sorted, deduplicated `ip:port`
/// authorities (IPv6 in brackets), whether or not they changed since the last call. A failed
/// or empty answer, or one that takes longer than 10 s, keeps the last good set (`publish` is
/// not called). Each resolution is counted in `weir_dns_resolutions_total{upstream, result}`
/// with `result` `ok` or `error`. The first failure of a run of failures is logged at warn, the
/// recovery at info, the failures in between at debug.
///
/// The loop ends when `publish` returns false (the endpoint set is gone) or when `cancel` is
/// cancelled, and only then; a resolution in progress is dropped on cancel.
pub async fn run<F>(
    upstream: Arc<str>,
    target: Authority,
    refresh: Duration,
    resolver: Arc<dyn Resolve>,
    metrics: Metrics,
    cancel: CancellationToken,
    mut publish: F,
) where
    F: FnMut(Vec<Authority>) -> bool + Send,
{
    let counter = |result: &'static str| {
        metrics.counter(
            DNS_RESOLUTIONS_TOTAL,
            &[
                ("upstream", upstream.clone()),
                ("result", Arc::from(result)),
            ],
        )
    };
    let (ok, error) = (counter("ok"), counter("error"));
    let mut run = FailureRun::default();
    loop {
        let Some(result) = cancel
            .run_until_cancelled(resolve_once(&*resolver, &target))
            .await
        else {
            return;
        };
        let transition = run.record(result.is_ok());
        match result {
            Ok(addrs) => {
                ok.increment(1);
                if transition == Some(Transition::Recovered) {
                    tracing::info!(
                        upstream = %upstream,
                        target = %target,
                        endpoints = addrs.len(),
                        "DNS resolution recovered"
                    );
                }
                tracing::debug!(
                    upstream = %upstream,
                    target = %target,
                    endpoints = ?addrs,
                    "DNS answer"
                );
                if !publish(addrs) {
                    return;
                }
            }
            Err(e) => {
                error.increment(1);
                if transition == Some(Transition::Failing) {
                    tracing::warn!(
                        upstream = %upstream,
                        target = %target,
                        error = %e,
                        "DNS resolution failed; the last endpoints stay"
                    );
                } else {
                    tracing::debug!(
                        upstream = %upstream,
                        target = %target,
                        error = %e,
                        "DNS resolution failed again"
                    );
                }
            }
        }
        if cancel
            .run_until_cancelled(tokio::time::sleep(refresh))
            .await
            .is_none()
        {
            return;
        }
    }
}

/// Resolves `target` (`host:port`) once, e.g. for the first endpoint set before serving: the
/// sorted, deduplicated `ip:port` authorities (IPv6 in brackets), never empty. An empty answer
/// is [`ResolveError::NoAddresses`]; no answer within 10 s is [`ResolveError::Timeout`]; every
/// error names the host.
pub async fn resolve_once(
    resolver: &dyn Resolve,
    target: &Authority,
) -> Result<Vec<Authority>, ResolveError> {
    let Some(port) = target.port_u16() else {
        return Err(ResolveError::NoPort {
            target: target.to_string(),
        });
    };
    let host = target.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ips = tokio::time::timeout(RESOLVE_TIMEOUT, resolver.resolve(host))
        .await
        .map_err(|_| ResolveError::Timeout {
            host: host.to_owned(),
            after: RESOLVE_TIMEOUT,
        })??;
    let addrs = authorities(ips, port);
    if addrs.is_empty() {
        return Err(ResolveError::NoAddresses {
            host: host.to_owned(),
        });
    }
    Ok(addrs)
}

/// `ip:port` authorities of `ips`, sorted by address (IPv4 first) and deduplicated.
fn authorities(mut ips: Vec<IpAddr>, port: u16) -> Vec<Authority> {
    ips.sort_unstable();
    ips.dedup();
    ips.into_iter()
        // An `ip:port` text always parses as an authority; nothing is dropped here.
        .filter_map(|ip| SocketAddr::new(ip, port).to_string().parse().ok())
        .collect()
}

/// Whether the loop is in a run of failures, so that a run is logged once.
#[derive(Debug, Default)]
struct FailureRun {
    failing: bool,
}

/// A resolution that starts or ends a run of failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    /// The first failure after a success (or at start): logged at warn.
    Failing,
    /// The first success after a failure: logged at info.
    Recovered,
}

impl FailureRun {
    /// Records one resolution; says whether it starts or ends a run of failures.
    fn record(&mut self, ok: bool) -> Option<Transition> {
        let was_failing = std::mem::replace(&mut self.failing, !ok);
        match (was_failing, ok) {
            (false, false) => Some(Transition::Failing),
            (true, true) => Some(Transition::Recovered),
            _ => None,
        }
    }
}

/// Answers are not cached: each resolution asks the servers (see [`HickoryResolver`]).
fn no_cache(options: &mut ResolverOpts) {
    options.cache_size = 0;
}

/// The longest one resolution may take before it counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::task::JoinHandle;
    use tokio::time::Instant;

    use super::*;

    /// What the fake answers next.
    #[derive(Clone)]
    enum Answer {
        Ips(Vec<IpAddr>),
        Fail,
        Hang,
    }

    /// A resolver whose answer the test sets; it records the hosts it was asked for.
    #[derive(Clone)]
    struct Fake(Arc<FakeInner>);

    struct FakeInner {
        answer: Mutex<Answer>,
        asked: Mutex<Vec<String>>,
    }

    impl Fake {
        fn new(answer: Answer) -> Self {
            Fake(Arc::new(FakeInner {
                answer: Mutex::new(answer),
                asked: Mutex::new(Vec::new()),
            }))
        }

        fn set(&self, answer: Answer) {
            *self.0.answer.lock().unwrap() = answer;
        }

        fn asked(&self) -> Vec<String> {
            self.0.asked.lock().unwrap().clone()
        }
    }

    impl Resolve for Fake {
        fn resolve<'a>(
            &'a self,
            host: &'a str,
        ) -> BoxFuture<'a, Result<Vec<IpAddr>, ResolveError>> {
            self.0.asked.lock().unwrap().push(host.to_owned());
            let answer = self.0.answer.lock().unwrap().clone();
            Box::pin(async move {
                match answer {
                    Answer::Ips(ips) => Ok(ips),
                    Answer::Fail => Err(ResolveError::Lookup {
                        host: host.to_owned(),
                        source: "server failure".into(),
                    }),
                    Answer::Hang => std::future::pending().await,
                }
            })
        }
    }

    fn ips(list: &[&str]) -> Answer {
        Answer::Ips(list.iter().map(|s| s.parse().unwrap()).collect())
    }

    fn auths(list: &[&str]) -> Vec<Authority> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// When (since the start) `publish` was called, and with what.
    type Published = (Duration, Vec<Authority>);

    /// A running loop over `fake` for upstream `u` and `backend.svc:8080`, every 5 s.
    struct Loop {
        start: Instant,
        published: Arc<Mutex<Vec<Published>>>,
        metrics: Metrics,
        cancel: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Loop {
        /// `keep` answers whether the endpoint set still exists after the n-th (0-based)
        /// publish.
        fn start(fake: &Fake, keep: impl Fn(usize) -> bool + Send + 'static) -> Self {
            let start = Instant::now();
            let published = Arc::new(Mutex::new(Vec::new()));
            let metrics = Metrics::new().unwrap();
            let cancel = CancellationToken::new();
            let sink = published.clone();
            let task = tokio::spawn(run(
                "u".into(),
                Authority::from_static("backend.svc:8080"),
                REFRESH,
                Arc::new(fake.clone()),
                metrics.clone(),
                cancel.clone(),
                move |addrs| {
                    let mut list = sink.lock().unwrap();
                    list.push((start.elapsed(), addrs));
                    keep(list.len() - 1)
                },
            ));
            Loop {
                start,
                published,
                metrics,
                cancel,
                task,
            }
        }

        /// Lets the paused clock run to `secs` after the start.
        async fn at(&self, secs: f64) {
            tokio::time::sleep_until(self.start + Duration::from_secs_f64(secs)).await;
        }

        fn published(&self) -> Vec<Published> {
            self.published.lock().unwrap().clone()
        }

        fn count(&self, result: &str) -> u64 {
            let series = format!("{DNS_RESOLUTIONS_TOTAL}{{upstream=\"u\",result=\"{result}\"}} ");
            self.metrics
                .render()
                .lines()
                .find_map(|l| l.strip_prefix(&series)?.parse().ok())
                .unwrap_or(0)
        }
    }

    const REFRESH: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn publishes_at_start_and_every_refresh() {
        let fake = Fake::new(ips(&["10.0.0.2", "10.0.0.1"]));
        let l = Loop::start(&fake, |_| true);
        l.at(0.001).await;
        let want = auths(&["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(l.published(), vec![(Duration::ZERO, want.clone())]);
        l.at(10.001).await;
        let times: Vec<Duration> = l.published().into_iter().map(|(t, _)| t).collect();
        assert_eq!(times, [0, 5, 10].map(Duration::from_secs));
        assert!(l.published().iter().all(|(_, a)| *a == want));
        assert_eq!((l.count("ok"), l.count("error")), (3, 0));
        assert_eq!(fake.asked(), ["backend.svc"; 3]);
        assert!(!l.task.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_keeps_the_last_set_and_recovery_publishes_again() {
        let fake = Fake::new(ips(&["10.0.0.1"]));
        let l = Loop::start(&fake, |_| true);
        l.at(0.001).await;
        fake.set(Answer::Fail);
        l.at(10.001).await;
        assert_eq!(l.published().len(), 1, "a failure publishes nothing");
        assert_eq!((l.count("ok"), l.count("error")), (1, 2));

        fake.set(ips(&["10.0.0.3", "10.0.0.4"]));
        l.at(15.001).await;
        let published = l.published();
        assert_eq!(published.len(), 2);
        assert_eq!(
            published[1],
            (
                Duration::from_secs(15),
                auths(&["10.0.0.3:8080", "10.0.0.4:8080"])
            )
        );
        assert_eq!((l.count("ok"), l.count("error")), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_answer_is_an_error() {
        let fake = Fake::new(ips(&["10.0.0.1"]));
        let l = Loop::start(&fake, |_| true);
        l.at(0.001).await;
        fake.set(ips(&[]));
        l.at(5.001).await;
        assert_eq!(l.published().len(), 1);
        assert_eq!((l.count("ok"), l.count("error")), (1, 1));

        let target = Authority::from_static("backend.svc:8080");
        let err = resolve_once(&fake, &target).await.unwrap_err();
        assert!(matches!(err, ResolveError::NoAddresses { .. }), "{err:?}");
        assert!(err.to_string().contains("backend.svc"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_resolution_that_hangs_times_out_as_an_error() {
        let fake = Fake::new(Answer::Hang);
        let l = Loop::start(&fake, |_| true);
        l.at(9.9).await;
        assert_eq!(l.count("error"), 0);
        l.at(10.001).await;
        assert_eq!((l.count("ok"), l.count("error")), (0, 1));
        fake.set(ips(&["10.0.0.1"]));
        // The next resolution starts a refresh after the timed-out one ended.
        l.at(15.001).await;
        assert_eq!(
            l.published(),
            vec![(Duration::from_secs(15), auths(&["10.0.0.1:8080"]))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_ends_when_publish_returns_false() {
        let fake = Fake::new(ips(&["10.0.0.1"]));
        let l = Loop::start(&fake, |n| n == 0);
        l.at(0.001).await;
        assert!(!l.task.is_finished());
        l.at(5.001).await;
        assert!(l.task.is_finished());
        l.at(30.0).await;
        assert_eq!(l.published().len(), 2);
        assert_eq!(fake.asked().len(), 2, "no resolution after the set is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_do_not_end_the_loop_but_cancel_does() {
        let fake = Fake::new(Answer::Fail);
        let l = Loop::start(&fake, |_| true);
        l.at(60.001).await;
        assert!(!l.task.is_finished());
        assert_eq!(l.count("error"), 13);
        fake.set(Answer::Hang);
        l.at(65.001).await;
        l.cancel.cancel();
        l.at(65.002).await;
        assert!(
            l.task.is_finished(),
            "cancel drops a resolution in progress"
        );
        assert!(l.published().is_empty());
    }

    #[test]
    fn a_run_of_failures_is_logged_once_and_so_is_the_recovery() {
        let mut run = FailureRun::default();
        let seen: Vec<_> = [true, false, false, false, true, true, false]
            .into_iter()
            .map(|ok| run.record(ok))
            .collect();
        let (warn, info) = (Some(Transition::Failing), Some(Transition::Recovered));
        assert_eq!(seen, [None, warn, None, None, info, None, warn]);
        let mut run = FailureRun::default();
        assert_eq!(
            run.record(false),
            warn,
            "a failure at start begins a run too"
        );
    }

    #[tokio::test]
    async fn addresses_are_sorted_deduplicated_and_ipv6_is_bracketed() {
        let fake = Fake::new(ips(&[
            "2001:db8::1",
            "10.0.0.2",
            "::1",
            "10.0.0.2",
            "10.0.0.10",
            "2001:db8::1",
        ]));
        let got = resolve_once(&fake, &Authority::from_static("svc:443"))
            .await
            .unwrap();
        let want = auths(&[
            "10.0.0.2:443",
            "10.0.0.10:443",
            "[::1]:443",
            "[2001:db8::1]:443",
        ]);
        assert_eq!(got, want);
        assert_eq!(got[2].as_str(), "[::1]:443");
        assert_eq!(got[2].host(), "[::1]");
    }

    #[tokio::test]
    async fn resolve_once_names_the_host_and_needs_a_port() {
        let fake = Fake::new(Answer::Fail);
        let err = resolve_once(&fake, &Authority::from_static("backend.svc:80"))
            .await
            .unwrap_err();
        assert!(matches!(err, ResolveError::Lookup { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot resolve backend.svc: server failure"
        );
        let err = resolve_once(&fake, &Authority::from_static("backend.svc"))
            .await
            .unwrap_err();
        assert!(matches!(err, ResolveError::NoPort { .. }), "{err:?}");
        assert_eq!(fake.asked(), ["backend.svc"], "no lookup without a port");
    }

    #[tokio::test]
    async fn an_ipv6_literal_target_is_looked_up_without_brackets() {
        let fake = Fake::new(ips(&["::1"]));
        let got = resolve_once(&fake, &Authority::from_static("[::1]:80"))
            .await
            .unwrap();
        assert_eq!(fake.asked(), ["::1"]);
        assert_eq!(got, auths(&["[::1]:80"]));
    }

    #[tokio::test]
    async fn hickory_resolves_ip_literals_and_needs_a_server() {
        let r = HickoryResolver::with_servers(&["127.0.0.1:9".parse().unwrap()]).unwrap();
        let got = resolve_once(&r, &Authority::from_static("10.1.2.3:80"))
            .await
            .unwrap();
        assert_eq!(got, auths(&["10.1.2.3:80"]));
        let err = HickoryResolver::with_servers(&[]).unwrap_err();
        assert!(matches!(err, ResolveError::Setup(_)), "{err:?}");
    }
}

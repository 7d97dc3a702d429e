//! [`Server`]: binds one listener per worker, starts and pins the worker threads, routes
//! shutdown signals to them, and collects their reports into the drain report.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::Socket;
use std::thread;
use std::time::{Instant, SystemTime};

use crate::config::{Builder, Config};
use crate::contract::Driver;
use crate::engine::{Engine, panic_message};
use crate::handler::{Handler, Worker};
use crate::listener;
use crate::mailbox;
use crate::notify::Notify;
use crate::shared::{Shared, ShutdownHandle, Trigger};
use crate::stats::{Report, WorkerReport};
use crate::sys::epoll::EpollDriver;
use crate::sys::socket::Listener;
use crate::sys::uring::UringDriver;
use crate::sys::{Backend, activation, cpu, signal};
use crate::upgrade::{self, Offer};
use crate::worker::Runner;

/// A bound server, ready to run: one listening socket per worker, all on one address.
///
/// ```no_run
/// use gracering::{Conn, Handler, Server};
///
/// struct Echo;
/// impl Handler for Echo {
///     type State = ();
///     type Message = ();
///     fn on_open(&mut self, _: &mut Conn<'_>) {}
///     fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
///         conn.write(data);
///         data.len()
///     }
/// }
///
/// # fn main() -> std::io::Result<()> {
/// let server = Server::builder().addr("127.0.0.1:7000".parse().unwrap()).bind()?;
/// let report = server.run(|_worker| Echo)?; // returns after SIGTERM, drained
/// eprintln!("{}", report.to_json());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    config: Config,
    listeners: Vec<Listener>,
    local_addr: SocketAddr,
    cpus: Vec<usize>,
    shared: Arc<Shared>,
    backend: Backend,
    /// What the start line says of the kernel (features, or why epoll).
    kernel: String,
    upgrade: Upgrade,
}

/// This server's part in in-place upgrades.
#[derive(Debug, Default)]
struct Upgrade {
    /// Offering its sockets to a successor (bound now).
    offer: Option<Offer>,
    /// Taken over from a predecessor: tell it once serving, then offer at `path`.
    predecessor: Option<UnixStream>,
    /// What to offer, for a successor that binds its offer after the take-over.
    later: Option<(PathBuf, Vec<Socket>, Vec<Arc<AtomicBool>>)>,
}

impl Server {
    /// A [`Builder`] with every setting at its default.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn bind(config: Config) -> io::Result<Server> {
        if config.handle_signals {
            // From here on a SIGTERM waits for the workers' signalfd instead of killing
            // the process: a supervisor may signal it as soon as it prints its address.
            signal::block_shutdown_signals()?;
        }
        let (backend, kernel) = config.backend.resolve()?;
        let cpus = cpu::allowed_cpus()?;
        let mut upgrade = Upgrade::default();
        let listeners = if let Some(from) = &config.upgrade_from {
            let (sockets, stream) = upgrade::take_over(from)?;
            upgrade.predecessor = Some(stream);
            listener::inherit(sockets, config.workers, cpus.len(), false)?
        } else {
            let passed = if config.socket_activation {
                activation::take_listeners()?
            } else {
                None
            };
            match passed {
                Some(sockets) => listener::inherit(sockets, config.workers, cpus.len(), true)?,
                None => {
                    let workers = config.workers.unwrap_or(cpus.len());
                    listener::bind_listeners(config.addr, workers, config.backlog)?
                }
            }
        };
        if let Some(path) = &config.upgrade_socket {
            // One descriptor of each distinct socket (a shared one once).
            let distinct = if listeners.iter().any(|l| l.shared) {
                1
            } else {
                listeners.len()
            };
            let sockets = listeners[..distinct]
                .iter()
                .map(|l| l.try_clone())
                .collect::<io::Result<Vec<_>>>()?;
            let handed = listeners.iter().map(|l| l.others.clone()).collect();
            if upgrade.predecessor.is_some() {
                upgrade.later = Some((path.clone(), sockets, handed));
            } else {
                upgrade.offer = Some(Offer::bind(path, sockets, handed, false)?);
            }
        }
        let local_addr = listener::local_addr(&listeners[0])?;
        let status = format!(
            "serving on {local_addr}: {} workers, {} backend",
            listeners.len(),
            backend.name()
        );
        let shared = Shared::new(listeners.len(), Notify::from_env(listeners.len(), status))?;
        Ok(Server {
            config,
            listeners,
            local_addr,
            cpus,
            shared,
            backend,
            upgrade,
            kernel,
        })
    }

    /// The address every worker listens on (with the port resolved when it was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many worker threads [`run`](Server::run) starts.
    pub fn workers(&self) -> usize {
        self.listeners.len()
    }

    /// Whether the listeners were passed by a service manager (socket activation)
    /// rather than bound by [`Builder::bind`].
    pub fn is_socket_activated(&self) -> bool {
        self.listeners.iter().any(|l| l.inherited)
    }

    /// The name of the backend the workers run on.
    pub fn backend(&self) -> &'static str {
        self.backend.name()
    }

    /// A handle that starts the drain from any thread, like SIGTERM.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: self.shared.clone(),
        }
    }

    /// The server's live [`Metrics`](crate::Metrics): every worker's counters, readable
    /// from any thread while it runs (and after).
    pub fn metrics(&self) -> crate::Metrics {
        crate::Metrics {
            shared: self.shared.clone(),
        }
    }

    /// Runs the workers and blocks until they have drained and stopped; returns the
    /// drain report.
    ///
    /// `factory` is called once on each worker thread and makes that worker's handler;
    /// through the [`Worker`] it gets the worker's index and registers the per-worker
    /// resources to tear down at the end. A handler needs no locks and need not be `Send`.
    ///
    /// Unless [`Builder::handle_signals`] turned it off, SIGTERM, SIGINT, SIGQUIT, SIGHUP,
    /// SIGUSR1 and SIGUSR2 are blocked
    /// in the calling thread (and so in every worker) and read through a signalfd: the
    /// first starts the drain, a second forces it. Threads the program started before
    /// must block them too: see [`block_shutdown_signals`](crate::block_shutdown_signals).
    pub fn run<H, F>(self, factory: F) -> io::Result<Report>
    where
        H: Handler,
        F: Fn(&mut Worker<H::Message>) -> H + Sync,
    {
        log::info!(
            "{} backend; {} workers on {}; {}",
            self.backend,
            self.listeners.len(),
            self.local_addr,
            self.kernel
        );
        let signalfd: Option<OwnedFd> = if self.config.handle_signals {
            signal::block_shutdown_signals()?;
            Some(signal::shutdown_signalfd()?)
        } else {
            None
        };
        let Server {
            config,
            listeners,
            cpus,
            shared,
            backend,
            upgrade,
            ..
        } = self;
        let done = AtomicBool::new(false);
        let signal_raw = signalfd.as_ref().map(AsRawFd::as_raw_fd);
        let results: Vec<io::Result<WorkerReport>> = thread::scope(|scope| {
            // However this closure returns, the helper threads end with it.
            let _finish = Finish(&shared, &done);
            if upgrade.offer.is_some() || upgrade.predecessor.is_some() {
                let (shared, done) = (&shared, &done);
                let spawned = thread::Builder::new()
                    .name("gracering-upgrade".into())
                    .spawn_scoped(scope, move || run_upgrade(upgrade, shared, done));
                if let Err(e) = spawned {
                    log::warn!("cannot start the upgrade thread: {e}");
                }
            }
            if let Some(notify) = &shared.notify {
                let mine = shared.clone();
                let spawned = thread::Builder::new()
                    .name("gracering-notify".into())
                    .spawn_scoped(scope, move || {
                        notify.run(|| mine.live(), || mine.draining());
                    });
                if let Err(e) = spawned {
                    log::warn!("cannot start the sd_notify thread: {e}");
                }
            }
            let mut handles = Vec::with_capacity(listeners.len());
            for (index, listener) in listeners.into_iter().enumerate() {
                let cpu = config.pin_workers.then(|| cpus[index % cpus.len()]);
                let (config, factory, mine) = (&config, &factory, shared.clone());
                let spawned = thread::Builder::new()
                    .name(format!("gracering-w{index}"))
                    .spawn_scoped(scope, move || {
                        let place = Place {
                            index,
                            cpu,
                            backend,
                            signalfd: signal_raw,
                        };
                        contain_worker(place, listener, mine, config, factory)
                    });
                match spawned {
                    Ok(handle) => handles.push(handle),
                    Err(e) => {
                        // Workers already started must not run forever: stop them.
                        shared.force(Trigger::Handle, Instant::now());
                        shared.wake_all();
                        return vec![Err(e)];
                    }
                }
            }
            handles
                .into_iter()
                .map(|h| {
                    // A worker's panics are caught inside it; this only guards the join.
                    h.join()
                        .unwrap_or_else(|_| Ok(WorkerReport::failed("worker panicked".into())))
                })
                .collect()
        });
        let began = shared.began();
        let drain_duration = began.map(|b| b.at.elapsed());
        // The wall-clock moment the drain began, from how long ago it was.
        let began_at = drain_duration.and_then(|d| SystemTime::now().checked_sub(d));
        drop(signalfd);
        let mut workers = Vec::with_capacity(results.len());
        let mut first_error = None;
        for result in results {
            match result {
                Ok(report) => workers.push(report),
                Err(e) => {
                    workers.push(WorkerReport::failed(format!("cannot start: {e}")));
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error
            && workers.iter().all(|w| w.failure.is_some())
        {
            return Err(e); // no worker ran at all: nothing was served, nothing to report
        }
        let report = Report {
            backend: backend.name(),
            trigger: began.map(|b| b.trigger),
            began_at,
            drain_duration,
            // Forced by a second signal (shared), or by a worker's grace deadline.
            forced: shared.forced() || workers.iter().any(|w| w.drain.forced),
            workers,
        };
        // The summary: a warning when the drain was not clean, so `warn` still shows it.
        let level = if report.is_clean() && !report.forced {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        log::log!(target: crate::drain::LOG_TARGET, level, "{}", report.summary());
        Ok(report)
    }
}

/// Ends the helper threads (notifier, upgrade) when the workers are done.
struct Finish<'a>(&'a Shared, &'a AtomicBool);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.1.store(true, Ordering::Release);
        if let Some(notify) = &self.0.notify {
            notify.finish();
        }
    }
}

/// The upgrade thread: a successor tells its predecessor once every worker accepts, then
/// offers its own sockets; a server offers until one takes over.
fn run_upgrade(upgrade: Upgrade, shared: &Shared, done: &AtomicBool) {
    let Upgrade {
        mut offer,
        predecessor,
        later,
    } = upgrade;
    if let Some(stream) = predecessor {
        while !shared.all_started() && !done.load(Ordering::Acquire) {
            thread::sleep(std::time::Duration::from_millis(2));
        }
        if done.load(Ordering::Acquire) {
            return; // never served: the predecessor keeps serving (rollback)
        }
        if let Err(e) = upgrade::confirm(stream) {
            log::warn!("upgrade: cannot tell the old process: {e}");
        }
        if let Some((path, sockets, handed)) = later {
            match Offer::bind(&path, sockets, handed, true) {
                Ok(o) => offer = Some(o),
                Err(e) => log::warn!("upgrade socket: {e}; no further upgrades"),
            }
        }
    }
    if let Some(offer) = offer {
        offer.run(shared, done);
    }
}

/// Where a worker runs: its index, its CPU, its backend, the signalfd to read.
#[derive(Debug, Clone, Copy)]
struct Place {
    index: usize,
    cpu: Option<usize>,
    backend: Backend,
    signalfd: Option<i32>,
}

/// One worker thread, with its failures contained: a worker that cannot go on (its
/// wait on the kernel failed, or something panicked outside a handler callback) still
/// returns a report saying why, after its backend closed its sockets, and starts the
/// drain of the others so the process ends and can be restarted.
fn contain_worker<H: Handler>(
    place: Place,
    listener: Listener,
    shared: Arc<Shared>,
    config: &Config,
    factory: &(impl Fn(&mut Worker<H::Message>) -> H + Sync),
) -> io::Result<WorkerReport> {
    let index = place.index;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        run_worker(place, listener, shared.clone(), config, factory)
    }));
    let report = match outcome {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            // It could not start: stop the others rather than run degraded forever.
            log::warn!("worker {index}: cannot start: {e}; stopping the server");
            if shared.force(Trigger::Handle, Instant::now()) {
                shared.wake_all();
            }
            return Err(e);
        }
        Err(payload) => WorkerReport::failed(format!("panicked: {}", panic_message(&*payload))),
    };
    if let Some(why) = &report.failure {
        log::warn!("worker {index} failed ({why}); its sockets are closed, draining the others");
        if shared.begin(Trigger::WorkerFailed, Instant::now()) {
            shared.wake_all();
        }
    }
    Ok(report)
}

/// One worker thread: pin, set up the backend, make the handler, run until drained.
fn run_worker<H: Handler>(
    place: Place,
    listener: Listener,
    shared: Arc<Shared>,
    config: &Config,
    factory: &(impl Fn(&mut Worker<H::Message>) -> H + Sync),
) -> io::Result<WorkerReport> {
    let Place {
        index,
        cpu,
        backend,
        signalfd,
    } = place;
    if let Some(cpu) = cpu
        && let Err(e) = cpu::pin_current_thread(cpu)
    {
        log::warn!("worker {index}: cannot pin to CPU {cpu}: {e}");
    }
    match backend {
        Backend::Epoll => {
            let driver = EpollDriver::new(listener, signalfd, shared.clone(), index)?;
            Ok(drive(driver, index, shared, config, factory))
        }
        Backend::Uring | Backend::Auto => {
            let driver = UringDriver::new(listener, signalfd, shared.clone(), index, config)?;
            Ok(drive(driver, index, shared, config, factory))
        }
    }
}

/// Makes the handler, serves until drained, releases the backend.
fn drive<H: Handler, D: Driver>(
    driver: D,
    index: usize,
    shared: Arc<Shared>,
    config: &Config,
    factory: &(impl Fn(&mut Worker<H::Message>) -> H + Sync),
) -> WorkerReport {
    let (mailbox, inbox) = mailbox::channel(shared.clone(), index, config.mailbox_capacity);
    let mut worker = Worker::new(index, mailbox);
    let handler = factory(&mut worker);
    let needed = handler.min_pending_input();
    if index == 0 && needed > config.max_pending_input {
        log::info!(
            "max_pending_input raised from {} to {needed} bytes: the handler keeps up to that much \
             unconsumed (an HTTP head up to max_head)",
            config.max_pending_input
        );
    }
    let engine = Engine::new(
        handler,
        (worker, inbox),
        config,
        shared.clone(),
        Instant::now(),
    );
    let mut runner = Runner::new(engine, driver);
    #[cfg(feature = "sim")]
    if let Some((failing, fault, flag)) = &config.fault
        && *failing == index
    {
        runner.inject_fault(*fault, flag.clone());
    }
    let served = runner.serve(&shared);
    if let Err(e) = &served {
        log::warn!("worker {index}: wait failed: {e}; releasing the backend");
        // The others start draining now, not after this worker's release.
        if shared.begin(Trigger::WorkerFailed, Instant::now()) {
            shared.wake_all();
        }
    }
    runner.release(served.is_err());
    if served.is_err() {
        runner.abandon();
    }
    let mut report = runner.report();
    if let Err(e) = served {
        report.failure = Some(format!("wait failed: {e}"));
    }
    report
}

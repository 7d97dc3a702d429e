//! [`Server`]: binds one listener per worker, starts and pins the worker threads, routes
//! shutdown signals to them, and collects their reports into the drain report.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread;
use std::time::{Instant, SystemTime};

use socket2::Socket;

use crate::config::{Builder, Config};
use crate::contract::Driver;
use crate::engine::{Engine, panic_message};
use crate::handler::{Handler, Worker};
use crate::listener;
use crate::log;
use crate::mailbox;
use crate::shared::{Shared, ShutdownHandle, Trigger};
use crate::stats::{Report, WorkerReport};
use crate::sys::epoll::EpollDriver;
use crate::sys::uring::UringDriver;
use crate::sys::{Backend, cpu, signal};
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
    listeners: Vec<Socket>,
    local_addr: SocketAddr,
    cpus: Vec<usize>,
    shared: Arc<Shared>,
    backend: Backend,
}

impl Server {
    /// A [`Builder`] with every setting at its default.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn bind(config: Config) -> io::Result<Server> {
        let backend = config.backend.resolve()?;
        let cpus = cpu::allowed_cpus()?;
        let workers = config.workers.unwrap_or(cpus.len());
        let listeners = listener::bind_all(config.addr, workers, config.backlog)?;
        let local_addr = listener::local_addr(&listeners[0])?;
        let shared = Shared::new(workers)?;
        Ok(Server {
            config,
            listeners,
            local_addr,
            cpus,
            shared,
            backend,
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
    /// Unless [`Builder::handle_signals`] turned it off, SIGTERM and SIGINT are blocked
    /// in the calling thread (and so in every worker) and read through a signalfd: the
    /// first starts the drain, a second forces it. Threads the program started before
    /// must block them too: see [`block_shutdown_signals`](crate::block_shutdown_signals).
    pub fn run<H, F>(self, factory: F) -> io::Result<Report>
    where
        H: Handler,
        F: Fn(&mut Worker<H::Message>) -> H + Sync,
    {
        log::info(format_args!(
            "{} backend; {} workers on {}",
            self.backend,
            self.listeners.len(),
            self.local_addr
        ));
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
            ..
        } = self;
        let signal_raw = signalfd.as_ref().map(AsRawFd::as_raw_fd);
        let results: Vec<io::Result<WorkerReport>> = thread::scope(|scope| {
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
        Ok(Report {
            backend: backend.name(),
            trigger: began.map(|b| b.trigger),
            began_at,
            drain_duration,
            forced: shared.forced(),
            workers,
        })
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
    listener: Socket,
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
            log::warn(format_args!(
                "worker {index}: cannot start: {e}; stopping the server"
            ));
            if shared.force(Trigger::Handle, Instant::now()) {
                shared.wake_all();
            }
            return Err(e);
        }
        Err(payload) => WorkerReport::failed(format!("panicked: {}", panic_message(&*payload))),
    };
    if let Some(why) = &report.failure {
        log::warn(format_args!(
            "worker {index} failed ({why}); its sockets are closed, draining the others"
        ));
        if shared.begin(Trigger::WorkerFailed, Instant::now()) {
            shared.wake_all();
        }
    }
    Ok(report)
}

/// One worker thread: pin, set up the backend, make the handler, run until drained.
fn run_worker<H: Handler>(
    place: Place,
    listener: Socket,
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
        log::warn(format_args!("worker {index}: cannot pin to CPU {cpu}: {e}"));
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
        log::warn(format_args!(
            "worker {index}: wait failed: {e}; releasing the backend"
        ));
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

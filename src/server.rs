//! [`Server`]: binds one listener per worker, starts and pins the worker threads, and
//! collects their reports.

use std::io;
use std::net::SocketAddr;
use std::thread;

use socket2::Socket;

use crate::config::{Builder, Config};
use crate::cpu;
use crate::engine::Engine;
use crate::handler::Handler;
use crate::listener;
use crate::log;
use crate::stats::{Report, WorkerStats};
use crate::sys::uring::{UringWorker, build_ring};

/// A bound server, ready to run: one listening socket per worker, all on one address.
///
/// ```no_run
/// use gracering::{Conn, Handler, Server};
///
/// struct Echo;
/// impl Handler for Echo {
///     type State = ();
///     fn on_open(&mut self, _: &mut Conn<'_>) {}
///     fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
///         conn.write(data);
///         data.len()
///     }
/// }
///
/// # fn main() -> std::io::Result<()> {
/// let server = Server::builder().addr("127.0.0.1:7000".parse().unwrap()).bind()?;
/// let report = server.run(|_worker| Echo)?;
/// eprintln!("{}", report.total());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    config: Config,
    listeners: Vec<Socket>,
    local_addr: SocketAddr,
    cpus: Vec<usize>,
}

impl Server {
    /// A [`Builder`] with every setting at its default.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn bind(config: Config) -> io::Result<Server> {
        let cpus = cpu::allowed_cpus()?;
        let workers = config.workers.unwrap_or(cpus.len());
        let listeners = listener::bind_all(config.addr, workers, config.backlog)?;
        let local_addr = listener::local_addr(&listeners[0])?;
        Ok(Server {
            config,
            listeners,
            local_addr,
            cpus,
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
        "io_uring"
    }

    /// Runs the workers on the calling thread's behalf and blocks until they stop.
    ///
    /// `factory` is called once on each worker thread with the worker's index and makes
    /// that worker's handler, so a handler needs no locks and need not be `Send`.
    pub fn run<H, F>(self, factory: F) -> io::Result<Report>
    where
        H: Handler,
        F: Fn(usize) -> H + Sync,
    {
        let (probe_ring, features) = build_ring(8)?;
        drop(probe_ring);
        log::info(format_args!(
            "{features}; {} workers on {}",
            self.listeners.len(),
            self.local_addr
        ));
        let Server {
            config,
            listeners,
            cpus,
            ..
        } = self;
        let results: Vec<io::Result<WorkerStats>> = thread::scope(|scope| {
            let handles: Vec<_> = listeners
                .into_iter()
                .enumerate()
                .map(|(index, listener)| {
                    let cpu = config.pin_workers.then(|| cpus[index % cpus.len()]);
                    let (config, factory) = (&config, &factory);
                    thread::Builder::new()
                        .name(format!("gracering-w{index}"))
                        .spawn_scoped(scope, move || {
                            run_worker(index, cpu, listener, config, factory)
                        })
                })
                .collect::<io::Result<_>>()?;
            Ok::<_, io::Error>(
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(io::Error::other("worker panicked")))
                    })
                    .collect(),
            )
        })?;
        let workers = results.into_iter().collect::<io::Result<Vec<_>>>()?;
        Ok(Report {
            backend: "io_uring",
            workers,
        })
    }
}

fn run_worker<H: Handler>(
    index: usize,
    cpu: Option<usize>,
    listener: Socket,
    config: &Config,
    factory: &(impl Fn(usize) -> H + Sync),
) -> io::Result<WorkerStats> {
    if let Some(cpu) = cpu
        && let Err(e) = cpu::pin_current_thread(cpu)
    {
        log::warn(format_args!("worker {index}: cannot pin to CPU {cpu}: {e}"));
    }
    let (backend, _) = UringWorker::new(listener, config)?;
    let engine = Engine::new(factory(index), index, config);
    backend.run(engine)
}

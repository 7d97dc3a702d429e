//! Outbound links on both backends, through real loopback sockets: a link carries
//! requests and closes only after the last response in the drain (with its goodbye);
//! refused, unreachable, timed out, reset and peer-closed are told apart (IPv4 and
//! IPv6); a peer that is down costs no spin; links are counted apart from accepted
//! connections. The in-memory backend for the exact teardown order.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use gracering::sim::Sim;
use gracering::{
    Builder, CloseReason, Conn, ConnAddr, ConnectOptions, Handler, Link, LinkId, LinkStatus, Local,
    Outbound, Worker,
};

mod support;
use support::inproc::{backends, builder};
use support::skip::{Need, skip};
use support::wait_until;

/// What the links' callbacks saw, across threads.
type Log = Arc<Mutex<Vec<String>>>;

fn log(log: &Log, line: String) {
    log.lock().unwrap().push(line);
}

/// A line client: sends `hello` on connect (when asked), posts each line it gets to the
/// oldest waiting connection, writes `QUIT` as its goodbye.
struct Lines {
    name: &'static str,
    waiting: Rc<RefCell<VecDeque<ConnAddr>>>,
    log: Log,
    hello: bool,
}

impl Outbound<Vec<u8>> for Lines {
    fn on_connect(&mut self, link: &mut Link<'_, Vec<u8>>) {
        log(&self.log, format!("{} up", self.name));
        if self.hello {
            link.write(b"hello\n");
        }
    }
    fn on_data(&mut self, link: &mut Link<'_, Vec<u8>>, data: &[u8]) -> usize {
        let Some(end) = data.iter().position(|&b| b == b'\n') else {
            return 0;
        };
        if let Some(to) = self.waiting.borrow_mut().pop_front() {
            let _ = link.post(to, data[..=end].to_vec());
        }
        end + 1
    }
    fn on_drain(&mut self, link: &mut Link<'_, Vec<u8>>) {
        log(&self.log, format!("{} goodbye", self.name));
        link.write(b"QUIT\n");
        link.close();
    }
    fn on_down(&mut self, local: &Local<Vec<u8>>, reason: CloseReason, retry: Option<Duration>) {
        log(
            &self.log,
            format!("{} down {reason:?} retry={}", self.name, retry.is_some()),
        );
        for to in self.waiting.borrow_mut().drain(..) {
            let _ = local.post(to, b"down\n".to_vec());
        }
    }
}

/// Forwards each line of every accepted connection to the link, answers with the
/// link's line.
struct Proxy {
    local: Local<Vec<u8>>,
    link: LinkId,
    waiting: Rc<RefCell<VecDeque<ConnAddr>>>,
}

impl Handler for Proxy {
    /// Requests waiting for the link's answer (a waiting connection is not idle).
    type State = usize;
    type Message = Vec<u8>;
    fn on_open(&mut self, _: &mut Conn<'_>) -> usize {
        0
    }
    fn on_data(&mut self, waiting: &mut usize, conn: &mut Conn<'_>, data: &[u8]) -> usize {
        let Some(end) = data.iter().position(|&b| b == b'\n') else {
            return 0;
        };
        match self.local.write(self.link, &data[..=end]) {
            Ok(()) => {
                self.waiting.borrow_mut().push_back(conn.addr());
                *waiting += 1;
            }
            Err(e) => conn.write(format!("error {e}\n").as_bytes()),
        }
        end + 1
    }
    fn on_drain(&mut self, waiting: &mut usize, conn: &mut Conn<'_>) {
        if *waiting == 0 {
            conn.close_when_idle();
        }
    }
    fn on_conn_message(
        &mut self,
        waiting: &mut usize,
        conn: &mut Conn<'_>,
        _: ConnAddr,
        msg: Vec<u8>,
    ) {
        conn.write(&msg);
        *waiting -= 1;
        if *waiting == 0 && conn.is_draining() {
            conn.close_when_idle();
        }
    }
}

/// The upstream: answers each line uppercased after `delay` (so requests are in flight
/// when the test wants them to be); records every line and when its peer closed.
struct Upstream {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    eof_at: Arc<Mutex<Vec<Instant>>>,
}

fn upstream(delay: Duration) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let eof_at = Arc::new(Mutex::new(Vec::new()));
    let (l, e) = (lines.clone(), eof_at.clone());
    thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(stream) = stream else { return };
            let (l, e) = (l.clone(), e.clone());
            thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    l.lock().unwrap().push(line.trim_end().to_owned());
                    if line.starts_with("QUIT") {
                        continue; // answered by closing, once the peer closes
                    }
                    thread::sleep(delay);
                    if out.write_all(line.to_uppercase().as_bytes()).is_err() {
                        break;
                    }
                }
                e.lock().unwrap().push(Instant::now());
            });
        }
    });
    Upstream {
        addr,
        lines,
        eof_at,
    }
}

#[test]
fn a_link_serves_through_the_drain_and_closes_after_the_last_response() {
    for backend in backends("a_link_serves_through_the_drain_and_closes_after_the_last_response") {
        let up = upstream(Duration::from_millis(300));
        let events: Log = Arc::default();
        let server = builder(backend, 1)
            .grace_period(Duration::from_secs(10))
            // A long linger: each accepted connection closes only after its client's
            // FIN, which the test sends after it read every answer, so the link's
            // close (after the last accepted connection's) is ordered after the reads
            // by the server itself, not by thread timing.
            .linger(Duration::from_secs(8))
            .bind()
            .unwrap();
        let (addr, handle) = (server.local_addr(), server.shutdown_handle());
        let (to, ev) = (up.addr, events.clone());
        let run = thread::spawn(move || {
            server.run(move |worker: &mut Worker<Vec<u8>>| {
                let waiting = Rc::new(RefCell::new(VecDeque::new()));
                let client = Lines {
                    name: "upstream",
                    waiting: waiting.clone(),
                    log: ev.clone(),
                    hello: false,
                };
                let local = worker.local();
                let link = local.connect(to, ConnectOptions::new(), client);
                let log = ev.clone();
                worker.on_teardown("after-link", move || {
                    log.lock().unwrap().push("teardown".into())
                });
                Proxy {
                    local,
                    link,
                    waiting,
                }
            })
        });
        assert!(wait_until(Duration::from_secs(5), || {
            events.lock().unwrap().iter().any(|e| e == "upstream up")
        }));
        // Ten clients, each with one request in flight at the upstream when the
        // drain begins.
        let mut clients: Vec<TcpStream> = (0..10)
            .map(|i| {
                let mut c = TcpStream::connect(addr).unwrap();
                c.write_all(format!("req{i}\n").as_bytes()).unwrap();
                c
            })
            .collect();
        assert!(wait_until(Duration::from_secs(5), || !up
            .lines
            .lock()
            .unwrap()
            .is_empty()));
        handle.shutdown();
        let mut last = Instant::now();
        for (i, c) in clients.iter_mut().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap(); // the answer, then the server's FIN
            assert_eq!(
                got,
                format!("REQ{i}\n"),
                "{backend:?}: every request answered"
            );
            last = Instant::now();
        }
        drop(clients); // our FINs: the server's connections close now
        let report = run.join().unwrap().unwrap();
        assert!(report.is_clean(), "{backend:?}: {}", report.to_json());
        let total = report.total();
        assert_eq!(
            total.accepted, 10,
            "{backend:?}: the link is not an accepted connection"
        );
        assert_eq!(total.closed, 10);
        assert_eq!((total.outbound_connected, total.outbound_closed), (1, 1));
        assert!(wait_until(Duration::from_secs(2), || !up
            .eof_at
            .lock()
            .unwrap()
            .is_empty()));
        let eof = up.eof_at.lock().unwrap()[0];
        assert!(
            eof >= last,
            "{backend:?}: the link closed {:?} before the last response",
            last - eof
        );
        let lines = up.lines.lock().unwrap().clone();
        assert_eq!(
            lines.last().map(String::as_str),
            Some("QUIT"),
            "{backend:?}: {lines:?}"
        );
        assert_eq!(lines.len(), 11);
        let events = events.lock().unwrap().clone();
        assert_eq!(
            events,
            [
                "upstream up",
                "teardown",
                "upstream goodbye",
                "upstream down Shutdown retry=false"
            ],
            "{backend:?}: the teardown registered after the link runs first"
        );
    }
}

/// A listener that completes no handshake: its accept queue (backlog 0) is filled, so
/// the kernel drops the next SYN and a connect hangs until its timeout.
fn black_hole() -> (SocketAddr, Vec<TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            fill.push(s);
        }
    }
    std::mem::forget(socket); // kept listening for the test's life
    (addr, fill)
}

/// A port nothing listens on.
fn closed_port(ip: &str) -> SocketAddr {
    let l = TcpListener::bind(format!("{ip}:0")).unwrap();
    l.local_addr().unwrap()
}

/// Opens the links the test lists from its first accepted connection's `on_open`.
struct Opener {
    local: Local<Vec<u8>>,
    targets: Vec<(&'static str, SocketAddr)>,
    log: Log,
}

impl Handler for Opener {
    type State = ();
    type Message = Vec<u8>;
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        let options = ConnectOptions::new()
            .timeout(Duration::from_millis(300))
            .once();
        for (name, to) in self.targets.drain(..) {
            let client = Lines {
                name,
                waiting: Rc::default(),
                log: self.log.clone(),
                hello: true,
            };
            let link = self.local.connect(to, options, client);
            assert_eq!(self.local.status(link), LinkStatus::Connecting);
        }
        conn.write(b"opened\n");
    }
    fn on_data(&mut self, _: &mut (), _: &mut Conn<'_>, data: &[u8]) -> usize {
        data.len()
    }
}

#[test]
fn connect_failures_are_told_apart() {
    let test = "connect_failures_are_told_apart";
    for backend in backends(test) {
        let (hole, _fill) = black_hole();
        // A peer that resets the link when it says hello, and one (over IPv6 where the
        // machine has it) that closes in an orderly way.
        let reset = TcpListener::bind("127.0.0.1:0").unwrap();
        let reset_addr = reset.local_addr().unwrap();
        thread::spawn(move || {
            if let Ok((mut s, _)) = reset.accept() {
                let mut b = [0u8; 6];
                let _ = s.read_exact(&mut b);
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
        });
        let mut targets = vec![
            ("refused", closed_port("127.0.0.1")),
            ("unreachable", "224.0.0.1:9".parse().unwrap()),
            ("timeout", hole),
            ("reset", reset_addr),
        ];
        match TcpListener::bind("[::1]:0") {
            Ok(v6) => {
                targets.push(("v6", v6.local_addr().unwrap()));
                thread::spawn(move || {
                    if let Ok((mut s, _)) = v6.accept() {
                        let mut b = [0u8; 6];
                        let _ = s.read_exact(&mut b); // hello, then an orderly close
                    }
                });
            }
            Err(e) => skip(
                test,
                Need::Ipv6Loopback,
                format!("cannot bind [::1]:0: {e}"),
            ),
        }
        let expected = targets.len();
        let events: Log = Arc::default();
        let server = builder(backend, 1).bind().unwrap();
        let (addr, handle) = (server.local_addr(), server.shutdown_handle());
        let shared = Arc::new(Mutex::new(Some(targets)));
        let ev = events.clone();
        let run = thread::spawn(move || {
            server.run(move |worker: &mut Worker<Vec<u8>>| Opener {
                local: worker.local(),
                targets: shared.lock().unwrap().take().unwrap_or_default(),
                log: ev.clone(),
            })
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let mut opened = [0u8; 7];
        c.read_exact(&mut opened).unwrap();
        let downs = || {
            let events = events.lock().unwrap();
            events.iter().filter(|e| e.contains(" down ")).count()
        };
        assert!(
            wait_until(Duration::from_secs(5), || downs() == expected),
            "{backend:?}: {:?}",
            events.lock().unwrap()
        );
        let events = events.lock().unwrap().clone();
        for want in [
            "refused down Refused retry=false",
            "unreachable down Unreachable retry=false",
            "timeout down TimedOut retry=false",
            "reset down Reset retry=false",
            "reset up",
        ] {
            assert!(
                events.iter().any(|e| e == want),
                "{backend:?}: no {want:?} in {events:?}"
            );
        }
        if expected == 5 {
            assert!(events.iter().any(|e| e == "v6 up"), "{events:?}");
            assert!(
                events.iter().any(|e| e == "v6 down PeerClosed retry=false"),
                "{events:?}"
            );
        }
        drop(c);
        handle.shutdown();
        let report = run.join().unwrap().unwrap();
        let total = report.total();
        assert_eq!(total.accepted, 1);
        assert_eq!(total.outbound_connects as usize, expected);
        assert_eq!(total.outbound_failed, 3, "{backend:?}: {total}");
        assert!(report.is_clean(), "{backend:?}: {}", report.to_json());
    }
}

/// Links to a port nothing listens on, reconnecting fast: the back-off bounds the
/// attempts and the CPU, and the worker serves on meanwhile.
struct Flood {
    local: Local<Vec<u8>>,
}

struct Quiet;
impl Outbound<Vec<u8>> for Quiet {
    fn on_data(&mut self, _: &mut Link<'_, Vec<u8>>, data: &[u8]) -> usize {
        data.len()
    }
}

impl Handler for Flood {
    type State = ();
    type Message = Vec<u8>;
    fn on_open(&mut self, _: &mut Conn<'_>) {}
    fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
        let _ = &self.local;
        conn.write(data);
        data.len()
    }
}

fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a live rusage.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[test]
fn a_peer_that_is_down_costs_no_spin() {
    let _serial = support::serial::serial();
    for backend in backends("a_peer_that_is_down_costs_no_spin") {
        const LINKS: usize = 50;
        let target = closed_port("127.0.0.1");
        let server = builder(backend, 1).bind().unwrap();
        let (addr, handle) = (server.local_addr(), server.shutdown_handle());
        let started = Instant::now();
        let cpu0 = process_cpu();
        let run = thread::spawn(move || {
            server.run(move |worker: &mut Worker<Vec<u8>>| {
                let local = worker.local();
                let options = ConnectOptions::new()
                    .reconnect(Duration::from_millis(1), Duration::from_millis(20));
                for _ in 0..LINKS {
                    local.connect(target, options, Quiet);
                }
                Flood { local }
            })
        });
        thread::sleep(Duration::from_millis(300));
        // The worker answers at once while its links fail.
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let t = Instant::now();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{backend:?}: {:?}",
            t.elapsed()
        );
        thread::sleep(Duration::from_millis(1200));
        drop(c);
        handle.shutdown();
        let report = run.join().unwrap().unwrap();
        let (wall, cpu) = (started.elapsed(), process_cpu() - cpu0);
        let total = report.total();
        // Back-off 1, 2, 4, 8, 16 ms, then every 20 ms: about 75 attempts per link in
        // 1.5 s; a spin would make thousands.
        let per_link = total.outbound_connects as f64 / LINKS as f64;
        let bound = wall.as_secs_f64() / 0.020 + 10.0;
        assert!(
            per_link >= 10.0 && per_link <= bound,
            "{backend:?}: {per_link:.0} connects per link in {wall:?} (bound {bound:.0})"
        );
        // Every attempt failed, but those still connecting at the teardown, which it
        // cancels (at most one per link).
        assert_eq!(total.outbound_connected, 0);
        assert!(
            total.outbound_failed + LINKS as u64 >= total.outbound_connects
                && total.outbound_failed <= total.outbound_connects,
            "{backend:?}: {} failed of {} connects",
            total.outbound_failed,
            total.outbound_connects
        );
        assert!(
            cpu.as_secs_f64() < 0.5 * wall.as_secs_f64(),
            "{backend:?}: {cpu:?} of CPU in {wall:?}"
        );
        assert!(report.is_clean(), "{backend:?}: {}", report.to_json());
        eprintln!("{backend:?}: {per_link:.0} connects per link, {cpu:?} CPU in {wall:?}");
    }
}

/// The in-memory backend: links close in reverse order of registration, mixed with the
/// teardowns, each waited for before the next resource.
#[test]
fn the_teardown_closes_links_and_teardowns_last_registered_first() {
    let order: Log = Arc::default();
    let (o1, o2) = (order.clone(), order.clone());
    let mut sim = Sim::with_factory(&Builder::new(), |worker: &mut Worker<Vec<u8>>| {
        let local = worker.local();
        let mk = |name| Lines {
            name,
            waiting: Rc::default(),
            log: order.clone(),
            hello: false,
        };
        let to: SocketAddr = "10.0.0.1:6379".parse().unwrap();
        worker.on_teardown("first", move || {
            o1.lock().unwrap().push("teardown first".into())
        });
        local.connect(to, ConnectOptions::new(), mk("link a"));
        worker.on_teardown("second", move || {
            o2.lock().unwrap().push("teardown second".into())
        });
        let link = local.connect(to, ConnectOptions::new(), mk("link b"));
        Proxy {
            local,
            link,
            waiting: Rc::default(),
        }
    });
    sim.run_until_idle();
    let dials = sim.take_dials();
    assert_eq!(dials.len(), 2);
    for &(peer, _) in &dials {
        sim.answer_dial(peer, Ok(()));
    }
    sim.run_until_idle();
    let (a, b) = (dials[0].0, dials[1].0);
    sim.hold_open(a); // the peers close only when the test says so
    sim.hold_open(b);
    sim.signal(libc::SIGTERM);
    sim.run_until_idle();
    // Link b (registered last) said goodbye and waits for its peer's close.
    assert_eq!(sim.take_received(b), b"QUIT\n");
    assert!(
        sim.take_received(a).is_empty(),
        "link a waits its turn: {:?}",
        order.lock().unwrap()
    );
    assert!(!sim.is_done());
    sim.shutdown_write(b);
    sim.run_until_idle();
    assert_eq!(sim.take_received(a), b"QUIT\n");
    sim.shutdown_write(a);
    sim.run_until_idle();
    assert!(sim.is_done());
    let order = order.lock().unwrap().clone();
    assert_eq!(
        order,
        [
            "link a up",
            "link b up",
            "link b goodbye",
            "link b down Shutdown retry=false",
            "teardown second",
            "link a goodbye",
            "link a down Shutdown retry=false",
            "teardown first",
        ]
    );
    assert_eq!(sim.stats().outbound_closed, 2);
}

/// The grace deadline bounds a link that never says goodbye's end.
#[test]
fn the_grace_deadline_cuts_a_link_that_never_closes() {
    let builder = Builder::new().grace_period(Duration::from_secs(2));
    let log: Log = Arc::default();
    let l = log.clone();
    let mut sim = Sim::with_factory(&builder, move |worker: &mut Worker<Vec<u8>>| {
        let local = worker.local();
        let client = Lines {
            name: "link",
            waiting: Rc::default(),
            log: l,
            hello: false,
        };
        let link = local.connect("10.0.0.1:1".parse().unwrap(), ConnectOptions::new(), client);
        Proxy {
            local,
            link,
            waiting: Rc::default(),
        }
    });
    sim.run_until_idle();
    let (peer, _) = sim.take_dials()[0];
    sim.answer_dial(peer, Ok(()));
    sim.run_until_idle();
    sim.hold_open(peer);
    sim.signal(libc::SIGTERM);
    sim.run_until_idle();
    assert_eq!(sim.take_received(peer), b"QUIT\n");
    assert!(!sim.is_done(), "the link lingers: its peer has not closed");
    sim.advance(Duration::from_secs(3));
    sim.run_until_idle();
    assert!(sim.is_done());
    assert_eq!(sim.stats().outbound_cut, 1);
}

/// The in-memory backend: a link that loses its peer is down (writes refused, waiting
/// requests answered by its client), reconnects after its back-off, and is up again;
/// a link closed for good is gone.
#[test]
fn a_link_reconnects_after_its_back_off_and_refuses_writes_while_down() {
    let log: Log = Arc::default();
    let l = log.clone();
    let options =
        ConnectOptions::new().reconnect(Duration::from_millis(100), Duration::from_millis(400));
    let mut link_id = None;
    let mut sim = Sim::with_factory(&Builder::new(), |worker: &mut Worker<Vec<u8>>| {
        let local = worker.local();
        let waiting = Rc::new(RefCell::new(VecDeque::new()));
        let client = Lines {
            name: "link",
            waiting: waiting.clone(),
            log: l,
            hello: false,
        };
        let link = local.connect("10.0.0.1:1".parse().unwrap(), options, client);
        link_id = Some(link);
        Proxy {
            local,
            link,
            waiting,
        }
    });
    let link = link_id.unwrap();
    let local = sim.local();
    sim.run_until_idle();
    let (first, _) = sim.take_dials()[0];
    assert_eq!(local.status(link), LinkStatus::Connecting);
    assert_eq!(
        local.write(link, b"x\n"),
        Err(gracering::LinkError::NotConnected)
    );
    sim.answer_dial(first, Ok(()));
    sim.run_until_idle();
    assert_eq!(local.status(link), LinkStatus::Up);

    // A request in flight when the peer goes away is answered by on_down.
    let client = sim.connect();
    sim.send(client, b"get\n");
    sim.run_until_idle();
    assert_eq!(sim.take_received(first), b"get\n");
    sim.reset(first);
    sim.run_until_idle();
    assert_eq!(sim.take_received(client), b"down\n");
    assert_eq!(local.status(link), LinkStatus::Down);
    sim.send(client, b"again\n");
    sim.run_until_idle();
    assert_eq!(
        sim.take_received(client),
        b"error the link is not connected\n"
    );
    // No reconnect before the back-off is over; one after.
    sim.advance(Duration::from_millis(99));
    sim.run_until_idle();
    assert!(sim.take_dials().is_empty());
    sim.advance(Duration::from_millis(1));
    sim.run_until_idle();
    let dials = sim.take_dials();
    assert_eq!(dials.len(), 1);
    // A refused reconnect doubles the back-off.
    sim.answer_dial(dials[0].0, Err(libc::ECONNREFUSED));
    sim.run_until_idle();
    sim.advance(Duration::from_millis(199));
    sim.run_until_idle();
    assert!(
        sim.take_dials().is_empty(),
        "200 ms after the second failure"
    );
    sim.advance(Duration::from_millis(1));
    sim.run_until_idle();
    let (second, _) = sim.take_dials()[0];
    sim.answer_dial(second, Ok(()));
    sim.run_until_idle();
    assert_eq!(local.status(link), LinkStatus::Up);
    sim.send(client, b"back\n");
    sim.run_until_idle();
    assert_eq!(sim.take_received(second), b"back\n");
    sim.send(second, b"BACK\n");
    sim.run_until_idle();
    assert_eq!(sim.take_received(client), b"BACK\n");
    // A peer that drops the link right after it connected keeps the back-off growing
    // (capped at 400 ms), so a flapping peer is not hammered.
    sim.reset(second);
    sim.run_until_idle();
    sim.advance(Duration::from_millis(399));
    sim.run_until_idle();
    assert!(
        sim.take_dials().is_empty(),
        "400 ms after a connection that did not last"
    );
    sim.advance(Duration::from_millis(1));
    sim.run_until_idle();
    let (third, _) = sim.take_dials()[0];
    sim.answer_dial(third, Ok(()));
    sim.run_until_idle();

    // Closed for good: no reconnect, the id names nothing any more.
    local.close(link);
    assert_eq!(local.status(link), LinkStatus::Closed);
    sim.run_until_idle();
    sim.advance(Duration::from_secs(10));
    sim.run_until_idle();
    assert!(sim.take_dials().is_empty());
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            "link up",
            "link down Reset retry=true",
            "link down Refused retry=true",
            "link up",
            "link down Reset retry=true",
            "link up",
            "link down Handler retry=false",
        ]
    );
    let stats = sim.stats();
    assert_eq!(
        (
            stats.outbound_connects,
            stats.outbound_connected,
            stats.outbound_failed
        ),
        (4, 3, 1)
    );
    assert_eq!(stats.outbound_closed, 3);
    assert_eq!(stats.accepted, 1, "links are not accepted connections");
}

/// A connect that never completes fails with TimedOut at its timeout, on the virtual
/// clock.
#[test]
fn a_connect_times_out_on_the_engine_timer() {
    let log: Log = Arc::default();
    let l = log.clone();
    let options = ConnectOptions::new()
        .timeout(Duration::from_millis(250))
        .once();
    let mut sim = Sim::with_factory(&Builder::new(), |worker: &mut Worker<Vec<u8>>| {
        let local = worker.local();
        let client = Lines {
            name: "link",
            waiting: Rc::default(),
            log: l,
            hello: false,
        };
        let link = local.connect("[2001:db8::1]:6379".parse().unwrap(), options, client);
        Proxy {
            local,
            link,
            waiting: Rc::default(),
        }
    });
    sim.run_until_idle();
    assert_eq!(sim.take_dials()[0].1, "[2001:db8::1]:6379".parse().unwrap());
    sim.advance(Duration::from_millis(249));
    sim.run_until_idle();
    assert!(log.lock().unwrap().is_empty());
    sim.advance(Duration::from_millis(10));
    sim.run_until_idle();
    assert_eq!(*log.lock().unwrap(), ["link down TimedOut retry=false"]);
    assert_eq!(sim.stats().outbound_failed, 1);
}

/// A link that asks to reconnect (its peer sent garbage, say) flushes, closes, is down
/// at once (writes refused) and connects again after its back-off, still registered.
#[test]
fn a_link_can_drop_its_connection_and_reconnect() {
    struct Picky;
    impl Outbound<Vec<u8>> for Picky {
        fn on_data(&mut self, link: &mut Link<'_, Vec<u8>>, data: &[u8]) -> usize {
            if data.starts_with(b"garbage") {
                link.write(b"bye\n");
                link.reconnect();
            }
            data.len()
        }
    }
    let mut id = None;
    let options =
        ConnectOptions::new().reconnect(Duration::from_millis(50), Duration::from_secs(1));
    let mut sim = Sim::with_factory(&Builder::new(), |worker: &mut Worker<Vec<u8>>| {
        let local = worker.local();
        let link = local.connect("10.0.0.1:1".parse().unwrap(), options, Picky);
        id = Some(link);
        Proxy {
            local,
            link,
            waiting: Rc::default(),
        }
    });
    let (link, local) = (id.unwrap(), sim.local());
    sim.run_until_idle();
    let (first, _) = sim.take_dials()[0];
    sim.answer_dial(first, Ok(()));
    sim.run_until_idle();
    sim.send(first, b"garbage");
    sim.run_until_idle();
    assert_eq!(local.status(link), LinkStatus::Down);
    assert_eq!(
        local.write(link, b"x"),
        Err(gracering::LinkError::NotConnected)
    );
    assert_eq!(sim.take_received(first), b"bye\n");
    assert!(sim.saw_eof(first), "the FIN follows the output");
    sim.advance(Duration::from_millis(50));
    sim.run_until_idle();
    let (second, _) = sim.take_dials()[0];
    sim.answer_dial(second, Ok(()));
    sim.run_until_idle();
    assert_eq!(local.status(link), LinkStatus::Up);
    assert_eq!(sim.stats().outbound_connected, 2);
}

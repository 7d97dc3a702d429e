//! The mailbox: messages from other threads (and other workers) into a worker, to the
//! worker or to one connection; addresses that outlive their connection; a full
//! mailbox; HTTP responses answered from a message. The in-memory backend for the
//! exact sequences, real servers on both backends for the threads and the wake-ups.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};
use gracering::sim::Sim;
use gracering::{Builder, Conn, ConnAddr, Handler, Mailbox, PostError, Worker};

mod support;
use support::inproc::{self, backends};

/// Addresses a test collects, and what its handler records.
type Addrs = Rc<RefCell<Vec<ConnAddr>>>;
type Log = Rc<RefCell<Vec<String>>>;

/// Remembers each connection's address; writes what it is posted; records the rest.
struct Relay {
    addrs: Rc<RefCell<Vec<ConnAddr>>>,
    log: Rc<RefCell<Vec<String>>>,
}

impl Handler for Relay {
    type State = ();
    type Message = String;

    fn on_open(&mut self, conn: &mut Conn<'_>) {
        self.addrs.borrow_mut().push(conn.addr());
    }
    fn on_data(&mut self, _: &mut (), _: &mut Conn<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_message(&mut self, msg: String) {
        self.log.borrow_mut().push(format!("worker {msg}"));
    }
    fn on_conn_message(&mut self, _: &mut (), conn: &mut Conn<'_>, to: ConnAddr, msg: String) {
        conn.write(format!("{msg} (tag {})", to.tag()).as_bytes());
    }
    fn on_undelivered(&mut self, msg: String) {
        self.log.borrow_mut().push(format!("undelivered {msg}"));
    }
}

fn relay(builder: &Builder) -> (Sim<Relay>, Addrs, Log) {
    let addrs = Rc::new(RefCell::new(Vec::new()));
    let log = Rc::new(RefCell::new(Vec::new()));
    let handler = Relay {
        addrs: addrs.clone(),
        log: log.clone(),
    };
    (Sim::with_config(handler, builder), addrs, log)
}

#[test]
fn messages_reach_the_worker_and_the_connection_they_name() {
    let (mut sim, addrs, log) = relay(&Builder::new());
    let a = sim.connect();
    let b = sim.connect();
    sim.run_until_idle();
    let mailbox = sim.mailbox();
    let (to_a, to_b) = (addrs.borrow()[0], addrs.borrow()[1]);
    std::thread::scope(|s| {
        s.spawn(|| mailbox.post_to(to_b.with_tag(7), "for b".into()).unwrap());
        s.spawn(|| mailbox.post("hello".into()).unwrap());
    });
    mailbox.post_to(to_a, "for a".into()).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.take_received(a), b"for a (tag 0)");
    assert_eq!(sim.take_received(b), b"for b (tag 7)");
    assert_eq!(*log.borrow(), ["worker hello"]);
    assert_eq!(sim.stats().messages, 3);
    assert_eq!(sim.stats().messages_undelivered, 0);
}

#[test]
fn a_message_for_a_closed_connection_never_reaches_the_next_one_in_its_slot() {
    let (mut sim, addrs, log) = relay(&Builder::new());
    let first = sim.connect();
    sim.run_until_idle();
    let old = addrs.borrow()[0];
    sim.shutdown_write(first);
    sim.run_until_idle();
    assert!(sim.is_closed(first));
    let second = sim.connect();
    sim.run_until_idle();
    let new = addrs.borrow()[1];
    assert_eq!(sim.live(), 1);
    sim.mailbox().post_to(old, "stale".into()).unwrap();
    sim.mailbox().post_to(new, "fresh".into()).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.take_received(second), b"fresh (tag 0)");
    assert_eq!(
        *log.borrow(),
        ["undelivered stale"],
        "handed back, not dropped"
    );
    assert_eq!(sim.stats().messages_undelivered, 1);
}

#[test]
fn a_full_mailbox_gives_the_message_back_at_once() {
    let (mut sim, _, log) = relay(&Builder::new().mailbox_capacity(2));
    let mailbox = sim.mailbox();
    mailbox.post("1".into()).unwrap();
    mailbox.post("2".into()).unwrap();
    match mailbox.post("3".into()) {
        Err(PostError::Full(msg)) => assert_eq!(msg, "3"),
        other => panic!("expected Full, got {other:?}"),
    }
    sim.run_until_idle();
    assert_eq!(*log.borrow(), ["worker 1", "worker 2"]);
    mailbox.post("4".into()).unwrap();
    sim.run_until_idle();
    assert_eq!(log.borrow().len(), 3);
}

/// Answers `/db` from a message: the request's address goes to a "database" (the test),
/// which posts the value back; `/twice` waits for two answers in a row.
struct Deferring {
    waiting: Rc<RefCell<Vec<ConnAddr>>>,
    late: Rc<RefCell<Vec<String>>>,
}

impl Service for Deferring {
    type Message = String;

    fn call(&mut self, req: &Request<'_>, res: &mut Response<'_>) {
        match req.path() {
            "/db" | "/twice" => {
                let addr = res.wait(Duration::from_millis(500));
                self.waiting.borrow_mut().push(addr);
            }
            _ => res.text(Status::OK, "now"),
        }
    }

    fn resume(&mut self, msg: String, res: &mut Response<'_>) {
        if let Some(first) = msg.strip_prefix("again:") {
            // Not done yet: wait for a second answer (a new address).
            let addr = res.wait(Duration::from_millis(500));
            self.waiting.borrow_mut().push(addr);
            self.late.borrow_mut().push(format!("first {first}"));
            return;
        }
        res.text(Status::OK, &msg);
    }

    fn on_undelivered(&mut self, msg: String) {
        self.late.borrow_mut().push(msg);
    }
}

fn deferring() -> (Sim<Http<Deferring>>, Addrs, Log) {
    let waiting = Rc::new(RefCell::new(Vec::new()));
    let late = Rc::new(RefCell::new(Vec::new()));
    let service = Deferring {
        waiting: waiting.clone(),
        late: late.clone(),
    };
    let sim = Sim::new(Http::new(HttpConfig::default(), service));
    (sim, waiting, late)
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

#[test]
fn http_answers_from_a_message_and_pipelined_requests_wait_in_order() {
    let (mut sim, waiting, _) = deferring();
    let peer = sim.connect();
    sim.send(
        peer,
        b"GET /db HTTP/1.1\r\nHost: x\r\n\r\nGET /now HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    sim.run_until_idle();
    assert_eq!(
        sim.received_len(peer),
        0,
        "the second request waits for the first"
    );
    let addr = waiting.borrow()[0];
    sim.mailbox()
        .post_to(addr, "from the database".into())
        .unwrap();
    sim.run_until_idle();
    let got = text(sim.take_received(peer));
    let first = got.find("from the database").expect(&got);
    let second = got.find("now").expect(&got);
    assert!(first < second, "answers in request order: {got}");
}

#[test]
fn http_resume_may_wait_again() {
    let (mut sim, waiting, late) = deferring();
    let peer = sim.connect();
    sim.send(peer, b"GET /twice HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.run_until_idle();
    let first = waiting.borrow()[0];
    sim.mailbox().post_to(first, "again:1".into()).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.received_len(peer), 0, "still waiting");
    let second = waiting.borrow()[1];
    assert_ne!(first, second, "each wait has its own address");
    sim.mailbox()
        .post_to(first, "a stale repeat".into())
        .unwrap();
    sim.mailbox().post_to(second, "done".into()).unwrap();
    sim.run_until_idle();
    let got = text(sim.take_received(peer));
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("done"),
        "{got}"
    );
    assert_eq!(*late.borrow(), ["first 1", "a stale repeat"]);
}

#[test]
fn http_a_deferred_answer_past_its_deadline_is_a_504_and_the_late_answer_comes_back() {
    let (mut sim, waiting, late) = deferring();
    let peer = sim.connect();
    sim.send(peer, b"GET /db HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.run_until_idle();
    sim.advance(Duration::from_millis(510));
    sim.run_until_idle();
    let got = text(sim.take_received(peer));
    assert!(got.starts_with("HTTP/1.1 504 Gateway Timeout"), "{got}");
    let addr = waiting.borrow()[0];
    sim.mailbox().post_to(addr, "too late".into()).unwrap();
    sim.run_until_idle();
    assert_eq!(sim.received_len(peer), 0);
    assert_eq!(*late.borrow(), ["too late"]);
}

#[test]
fn http_the_drain_answers_a_waiting_request_with_connection_close() {
    let (mut sim, waiting, _) = deferring();
    let busy = sim.connect();
    let idle = sim.connect();
    sim.send(busy, b"GET /db HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.run_until_idle();
    // Quiet past the drain's busy window (200 ms): the idle one is not about to send.
    sim.advance(Duration::from_millis(300));
    sim.signal(libc::SIGTERM);
    sim.run_until_idle();
    assert!(sim.is_closed(idle), "idle: closed at once");
    assert!(!sim.is_closed(busy), "waiting on the database: busy");
    assert!(!sim.is_done());
    let addr = waiting.borrow()[0];
    sim.mailbox().post_to(addr, "answered".into()).unwrap();
    sim.run_until_idle();
    let got = text(sim.take_received(busy));
    assert!(
        got.contains("connection: close") || got.contains("Connection: close"),
        "{got}"
    );
    assert!(got.ends_with("answered"));
    assert!(sim.is_closed(busy) && sim.is_done());
    assert_eq!(sim.drain_report().aborted, 0);
}

/// Counts what it is posted, checking each sender's messages arrive in order.
struct Tally {
    seen: HashMap<u32, u64>,
    out_of_order: u64,
    total: Arc<AtomicU64>,
    done: Arc<Mutex<Vec<(usize, u64, u64)>>>,
    index: usize,
}

impl Handler for Tally {
    type State = ();
    type Message = (u32, u64);
    fn on_open(&mut self, _: &mut Conn<'_>) {}
    fn on_data(&mut self, _: &mut (), _: &mut Conn<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_message(&mut self, (sender, seq): (u32, u64)) {
        let next = self.seen.entry(sender).or_insert(0);
        if seq != *next {
            self.out_of_order += 1;
        }
        *next = seq + 1;
        self.total.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let delivered: u64 = self.seen.values().sum();
        let mut done = self.done.lock().unwrap();
        done.push((self.index, delivered, self.out_of_order));
    }
}

/// 8 threads post 1,000,000 messages to 2 workers: every one delivered exactly once, in
/// order per sender, and far fewer wake-ups than messages (a worker that is awake needs
/// none).
#[test]
fn a_million_messages_from_8_threads_arrive_once_each_in_order() {
    const SENDERS: u32 = 8;
    const EACH: u64 = 125_000;
    for backend in backends("a_million_messages_from_8_threads_arrive_once_each_in_order") {
        let total = Arc::new(AtomicU64::new(0));
        let done = Arc::new(Mutex::new(Vec::new()));
        let mailboxes = Arc::new(Mutex::new(Vec::new()));
        let server = inproc::builder(backend, 2).bind().unwrap();
        let handle = server.shutdown_handle();
        let (t, d, m) = (total.clone(), done.clone(), mailboxes.clone());
        let run = std::thread::spawn(move || {
            server.run(move |worker: &mut Worker<(u32, u64)>| {
                m.lock().unwrap().push(worker.mailbox());
                Tally {
                    seen: HashMap::new(),
                    out_of_order: 0,
                    total: t.clone(),
                    done: d.clone(),
                    index: worker.index(),
                }
            })
        });
        let start = Instant::now();
        while mailboxes.lock().unwrap().len() < 2 {
            assert!(start.elapsed() < Duration::from_secs(10), "workers started");
            std::thread::yield_now();
        }
        let boxes: Vec<Mailbox<(u32, u64)>> = mailboxes.lock().unwrap().clone();
        let full = AtomicU64::new(0);
        std::thread::scope(|s| {
            for sender in 0..SENDERS {
                let (boxes, full) = (&boxes, &full);
                s.spawn(move || {
                    // Each sender keeps to one worker: order is per sender and mailbox.
                    let mailbox = &boxes[sender as usize % boxes.len()];
                    for seq in 0..EACH {
                        let mut msg = (sender, seq);
                        loop {
                            match mailbox.post(msg) {
                                Ok(()) => break,
                                Err(PostError::Full(back)) => {
                                    full.fetch_add(1, Ordering::Relaxed);
                                    msg = back;
                                    std::thread::yield_now();
                                }
                                Err(e) => panic!("post failed: {e}"),
                            }
                        }
                    }
                });
            }
        });
        let want = u64::from(SENDERS) * EACH;
        let start = Instant::now();
        while total.load(Ordering::Relaxed) < want {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{backend}: delivered {} of {want}",
                total.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        handle.shutdown();
        let report = run.join().unwrap().unwrap();
        let done = done.lock().unwrap();
        let delivered: u64 = done.iter().map(|d| d.1).sum();
        let out_of_order: u64 = done.iter().map(|d| d.2).sum();
        assert_eq!(delivered, want, "{backend}: exactly once each");
        assert_eq!(out_of_order, 0, "{backend}: in order per sender");
        let stats = report.total();
        assert_eq!(stats.messages, want, "{backend}");
        assert!(
            matches!(boxes[0].post((0, 0)), Err(PostError::Closed(_))),
            "{backend}: a stopped worker refuses posts"
        );
        assert!(
            stats.wakeups < want / 10,
            "{backend}: {} wake-ups for {want} messages",
            stats.wakeups
        );
        println!(
            "{backend}: {want} messages, {} wake-ups, {} posts refused as full and retried",
            stats.wakeups,
            full.load(Ordering::Relaxed)
        );
    }
}

/// Counts connections on every worker: each accepted connection posts a message to
/// every other worker (from a worker thread: woken through the ring, or its eventfd).
struct Gossip {
    peers: Arc<Mutex<Vec<Mailbox<u32>>>>,
    heard: Arc<AtomicU64>,
    index: u32,
}

impl Handler for Gossip {
    type State = ();
    type Message = u32;
    fn on_open(&mut self, _: &mut Conn<'_>) {
        for mailbox in self.peers.lock().unwrap().iter() {
            if mailbox.worker() != self.index as usize {
                mailbox.post(self.index).unwrap();
            }
        }
    }
    fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
        conn.write(data);
        data.len()
    }
    fn on_message(&mut self, _from: u32) {
        self.heard.fetch_add(1, Ordering::Relaxed);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn workers_post_to_each_other() {
    for backend in backends("workers_post_to_each_other") {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let heard = Arc::new(AtomicU64::new(0));
        let server = inproc::builder(backend, 2).bind().unwrap();
        let (addr, handle) = (server.local_addr(), server.shutdown_handle());
        let (p, h) = (peers.clone(), heard.clone());
        let run = std::thread::spawn(move || {
            server.run(move |worker: &mut Worker<u32>| {
                p.lock().unwrap().push(worker.mailbox());
                Gossip {
                    peers: p.clone(),
                    heard: h.clone(),
                    index: worker.index() as u32,
                }
            })
        });
        let start = Instant::now();
        while peers.lock().unwrap().len() < 2 {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::yield_now();
        }
        let mut conns = Vec::new();
        for i in 0..20u8 {
            let mut s = connect(addr);
            s.write_all(&[i]).unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            conns.push(s);
        }
        let start = Instant::now();
        while heard.load(Ordering::Relaxed) < 20 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{backend}: heard {} of 20",
                heard.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        handle.shutdown();
        drop(conns);
        let report = run.join().unwrap().unwrap();
        assert_eq!(report.total().messages, 20, "{backend}");
    }
}

#[test]
fn http_the_grace_deadline_cuts_a_request_still_waiting_for_its_answer() {
    let waiting = Rc::new(RefCell::new(Vec::new()));
    let late = Rc::new(RefCell::new(Vec::new()));
    let service = Deferring {
        waiting: waiting.clone(),
        late: late.clone(),
    };
    let builder = Builder::new().grace_period(Duration::from_millis(300));
    let mut sim = Sim::with_config(Http::new(HttpConfig::default(), service), &builder);
    let peer = sim.connect();
    sim.send(peer, b"GET /db HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.run_until_idle();
    sim.signal(libc::SIGTERM);
    sim.run_until_idle();
    assert!(
        !sim.is_closed(peer),
        "waiting on the database: kept through the drain"
    );
    sim.advance(Duration::from_millis(299));
    sim.run_until_idle();
    assert!(!sim.is_closed(peer));
    sim.advance(Duration::from_millis(1));
    sim.run_until_idle();
    assert!(
        sim.is_closed(peer) && sim.is_done(),
        "cut at the grace deadline"
    );
    assert_eq!(sim.drain_report().aborted, 1);
    assert_eq!(sim.received_len(peer), 0, "no half answer");
    // The database answers after all: the request is gone, the answer comes back.
    let addr = waiting.borrow()[0];
    sim.mailbox().post_to(addr, "after the cut".into()).unwrap();
    sim.run_until_idle();
    assert_eq!(*late.borrow(), ["after the cut"]);
    assert_eq!(sim.stats().messages_undelivered, 1);
}

#[test]
fn http_a_request_pipelined_during_a_wait_is_answered_before_the_drain_closes() {
    let (mut sim, waiting, _) = deferring();
    let peer = sim.connect();
    sim.send(peer, b"GET /db HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.run_until_idle();
    // The next request arrives while the first waits for its answer.
    sim.send(peer, b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n");
    sim.run_until_idle();
    sim.signal(libc::SIGTERM);
    sim.run_until_idle();
    let addr = waiting.borrow()[0];
    sim.mailbox().post_to(addr, "first".into()).unwrap();
    sim.run_until_idle();
    let got = text(sim.take_received(peer));
    let (first, second) = got.split_at(got.find("HTTP/1.1 200").unwrap() + 1);
    let second_at = second.find("HTTP/1.1 200").expect(&got);
    let (first, second) = (&got[..first.len() + second_at], &second[second_at..]);
    assert!(
        first.ends_with("first") && !first.contains("close"),
        "{got}"
    );
    assert!(second.contains("close") && second.ends_with("now"), "{got}");
    assert!(sim.is_closed(peer) && sim.is_done());
}

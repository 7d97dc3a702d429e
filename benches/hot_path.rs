//! Criterion benches of the per-completion hot path, without the kernel:
//! decoding a completion's `user_data`, recycling a provided buffer, and one full echo
//! turn of the real engine fed from memory, and HTTP parse-and-respond per request.
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gracering::bench::{BenchEngine, BufRingBench, EchoEngine, decode_user_data, recv_user_data};
use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};
use gracering::sim::Sim;
use gracering::{Conn, Handler};

fn decode(c: &mut Criterion) {
    let user_data: Vec<u64> = (0..1024).map(|k| recv_user_data(k, k * 7)).collect();
    let mut g = c.benchmark_group("completion");
    g.throughput(Throughput::Elements(user_data.len() as u64));
    g.bench_function("decode_user_data_x1024", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for &ud in &user_data {
                if let Some((_, key, generation)) = decode_user_data(black_box(ud)) {
                    acc = acc.wrapping_add(key ^ generation);
                }
            }
            acc
        })
    });
    g.finish();
}

fn buffer_ring(c: &mut Criterion) {
    let mut ring = BufRingBench::new(1024, 4096);
    let mut bid = 0u16;
    let mut g = c.benchmark_group("buffer_ring");
    g.throughput(Throughput::Elements(64));
    g.bench_function("consume_recycle_x64_publish", |b| {
        b.iter(|| {
            let mut acc = 0u8;
            for _ in 0..64 {
                acc ^= ring.consume_and_recycle(bid, 64);
                bid = (bid + 1) & 1023;
            }
            ring.publish();
            acc
        })
    });
    g.finish();
}

fn echo_turn(c: &mut Criterion) {
    let msg = [0x5au8; 64];
    let mut g = c.benchmark_group("echo_turn");
    for conns in [1usize, 100] {
        let mut engine = EchoEngine::new(conns);
        g.throughput(Throughput::Elements(conns as u64));
        g.bench_function(format!("engine_{conns}_conns_64B"), |b| {
            b.iter(|| engine.turn(black_box(&msg)))
        });
    }
    g.finish();
}

struct Echo;

impl Handler for Echo {
    type State = ();
    type Message = ();
    fn on_open(&mut self, _: &mut Conn<'_>) {}
    fn on_data(&mut self, _: &mut (), conn: &mut Conn<'_>, data: &[u8]) -> usize {
        conn.write(data);
        data.len()
    }
}

fn sim_round_trip(c: &mut Criterion) {
    let mut sim = Sim::new(Echo);
    let peer = sim.connect();
    sim.run_until_idle();
    let msg = [0x5au8; 64];
    c.bench_function("sim/echo_round_trip_64B", |b| {
        b.iter(|| {
            sim.send(peer, &msg);
            sim.turn();
            sim.turn();
            sim.take_received(peer).len()
        })
    });
}

struct Hello;

impl Service for Hello {
    type Message = ();
    fn call(&mut self, req: &Request<'_>, res: &mut Response<'_>) {
        match req.path() {
            "/" => res.text(Status::OK, "Hello, World!"),
            _ => res.text(Status::NOT_FOUND, "not found"),
        }
    }
}

/// Parse-and-respond per request: the HTTP layer on the real engine, fed from memory
/// (the request as wrk sends it), one request per turn and 16 pipelined per turn.
fn http_request(c: &mut Criterion) {
    let one = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
    let sixteen = one.repeat(16);
    let mut g = c.benchmark_group("http");
    let mut engine = BenchEngine::with_handler(Http::new(HttpConfig::default(), Hello), 1);
    g.throughput(Throughput::Elements(1));
    g.bench_function("get_parse_and_respond", |b| {
        b.iter(|| engine.turn(black_box(one)))
    });
    let mut engine = BenchEngine::with_handler(Http::new(HttpConfig::default(), Hello), 1);
    g.throughput(Throughput::Elements(16));
    g.bench_function("get_pipelined_x16", |b| {
        b.iter(|| engine.turn(black_box(&sixteen)))
    });
    g.finish();
}

criterion_group!(
    benches,
    decode,
    buffer_ring,
    echo_turn,
    sim_round_trip,
    http_request
);
criterion_main!(benches);

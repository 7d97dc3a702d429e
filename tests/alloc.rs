//! Allocation counting: a plain GET, parsed and answered, allocates nothing once the
//! connection is warm. Runs the real engine and HTTP layer on the in-memory backend,
//! with a global allocator that counts the allocations of the calling thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use gracering::http::{Http, HttpConfig, Request, Response, Service, Status};
use gracering::sim::Sim;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged; only counts calls, in a
// const-initialised thread-local that never allocates itself.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

#[test]
fn a_plain_get_allocates_nothing() {
    let mut sim = Sim::new(Http::new(HttpConfig::default(), Hello));
    let peer = sim.connect();
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n";
    let exchange = |sim: &mut Sim<Http<Hello>>| {
        sim.send(peer, request);
        sim.turn(); // request in, response written and sent
        sim.turn(); // send completion
        let n = sim.received_len(peer);
        sim.clear_received(peer);
        n
    };
    for _ in 0..100 {
        assert!(exchange(&mut sim) > 0);
    }
    let before = allocs();
    for _ in 0..1000 {
        assert!(exchange(&mut sim) > 100);
    }
    let during = allocs() - before;
    assert_eq!(during, 0, "allocations for 1,000 warm GET requests");
}

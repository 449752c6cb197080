//! `pymalloc::trace` (tracemalloc for Rust) on a small server loop that
//! leaks in one place and churns in another: the top 10 lines holding live
//! memory, the difference of two snapshots (which points at the leak) and
//! an SVG flame graph of live memory.
//!
//! ```sh
//! cargo run --features trace-svg --example trace -- examples/trace.svg
//! ```
//!
//! (Tracebacks need debug information: in a release build, set
//! `CARGO_PROFILE_RELEASE_DEBUG=line-tables-only`.)

use pymalloc::trace::{self, Key};
use std::collections::HashMap;

#[global_allocator]
static HEAP: pymalloc::PrivateHeap = pymalloc::PrivateHeap::new();

/// A logged-in user, kept in the session cache.
struct Session {
    name: String,
    history: Vec<u64>,
}

/// The leak: every request adds a session that is never evicted.
fn remember_session(cache: &mut Vec<Session>, id: u64) {
    let name = format!("user-{id:08}");
    let history = Vec::with_capacity(64);
    cache.push(Session { name, history });
}

/// The churn: a request body parsed into fields, all freed at once.
fn handle_request(id: u64) -> usize {
    let body = vec![b'x'; 2048 + (id as usize % 7) * 256];
    let fields: Vec<String> = body
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    fields.iter().map(String::len).sum()
}

/// Long-lived configuration, read once: big, but not growing.
fn load_config() -> HashMap<String, String> {
    (0..2000)
        .map(|i| (format!("option.{i}"), "x".repeat(100)))
        .collect()
}

fn serve(cache: &mut Vec<Session>, requests: std::ops::Range<u64>) -> usize {
    let mut bytes = 0;
    for id in requests {
        bytes += handle_request(id);
        if id % 4 == 0 {
            remember_session(cache, id);
        }
    }
    bytes
}

fn main() {
    let svg = std::env::args().nth(1).unwrap_or("trace.svg".into());
    trace::start(16);
    let config = load_config();
    let mut cache = Vec::new();
    serve(&mut cache, 0..4000);
    let first = trace::take_snapshot();
    serve(&mut cache, 4000..12_000);
    let second = trace::take_snapshot();

    println!("[ Top 10 ]");
    print!("{}", trace::top(&second.statistics(Key::Lineno), 10));
    println!();
    println!("[ Top 10 differences ]");
    print!(
        "{}",
        trace::top(&second.compare_to(&first, Key::Lineno), 10)
    );
    println!();
    let (current, peak) = trace::get_traced_memory();
    println!(
        "traced: current {}, peak {}",
        trace::format_size(current as f64, false),
        trace::format_size(peak as f64, false)
    );
    let file = std::fs::File::create(&svg).expect("create the SVG");
    second
        .write_flamegraph_svg("Live memory by call stack (examples/trace.rs)", file)
        .expect("write the SVG");
    println!("flame graph of live memory: {svg}");
    trace::stop();
    let last = cache.last().expect("sessions");
    println!(
        "{} sessions kept (the last: {}, history room {}), {} options",
        cache.len(),
        last.name,
        last.history.capacity(),
        config.len()
    );
}

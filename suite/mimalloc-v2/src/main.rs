//! The workload suite on mimalloc's v2 line (see Cargo.toml).

#[path = "../../benches/common/select.rs"]
#[macro_use]
mod select;
#[path = "../../benches/common/workloads.rs"]
#[allow(dead_code)]
mod workloads;

define_select! {
    0 "mimalloc-v2" => mimalloc::MiMalloc,
}

#[global_allocator]
static GLOBAL: Select = Select;

fn main() {
    workloads::main(selected(), pairs_direct, || {});
}

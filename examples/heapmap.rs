//! A picture of the heap: one row per arena, one cell per pool, coloured by
//! size class and shaded by how full the pool is.
//!
//! ```sh
//! cargo run --release --example heapmap -- examples/heapmap.svg
//! ```
//!
//! The workload fragments a heap on purpose: it allocates 120,000 small
//! objects of mixed sizes, then frees three in four of them at random and
//! every object of a few size classes. The left panel is the heap full, the
//! right one after the frees: pools half full of live objects pin their
//! arenas, while pools of the classes freed whole go back to their arenas
//! (grey), and arenas left with no live pool are spares or given back.

use allocator_api2::alloc::Allocator;
use core::alloc::Layout;
use core::ptr::NonNull;
use pymalloc::{ArenaInfo, PoolState, PrivateHeap};
use std::fmt::Write as _;

/// Pixels per pool cell, and between cells.
const CELL: usize = 9;
const GAP: usize = 1;
const MARGIN: usize = 20;
const LABEL: usize = 44;

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "heapmap.svg".into());
    let heap = PrivateHeap::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };

    // Sizes skewed towards small objects, as in most programs.
    let mut live: Vec<(NonNull<u8>, Layout)> = (0..120_000)
        .map(|_| {
            let r = next();
            let size = match r % 10 {
                0..=4 => 8 + (r >> 8) as usize % 56,   // 8-63 B
                5..=7 => 64 + (r >> 8) as usize % 192, // 64-255 B
                _ => 256 + (r >> 8) as usize % 257,    // 256-512 B
            };
            let layout = Layout::from_size_align(size, 8).unwrap();
            let block = (&heap).allocate(layout).expect("out of memory");
            (block.cast(), layout)
        })
        .collect();
    let full = heap.arenas();

    // Free three in four objects at random, and every object of 48-63 B
    // and 320-383 B (whole classes that go away, as a phase of a program
    // ends).
    live.retain(|&(ptr, layout)| {
        let gone = next() % 4 != 0
            || (48..64).contains(&layout.size())
            || (320..384).contains(&layout.size());
        if gone {
            // SAFETY: allocated above with `layout`, freed once.
            unsafe { (&heap).deallocate(ptr, layout) };
        }
        !gone
    });
    let fragmented = heap.arenas();

    for (name, arenas) in [("full", &full), ("after frees", &fragmented)] {
        let pools: Vec<_> = arenas.iter().flat_map(|a| a.pools.iter()).collect();
        let count = |s| {
            pools
                .iter()
                .filter(|p| p.class.is_some() && p.state == s)
                .count()
        };
        let in_use: usize = arenas.iter().map(ArenaInfo::bytes_in_use).sum();
        println!(
            "{name:>12}: {} arenas, pools used {} / full {} / free {}, {:.1} MiB in live blocks, {:.0}% of arena space",
            arenas.len(),
            count(PoolState::Used),
            count(PoolState::Full),
            pools.iter().filter(|p| p.class.is_none()).count(),
            in_use as f64 / (1 << 20) as f64,
            100.0 * in_use as f64 / (arenas.len().max(1) * pymalloc::Arena::SIZE) as f64,
        );
    }

    let svg = render(&[
        ("Heap full: 120,000 objects", &full),
        ("After freeing 3 in 4, and 2 classes whole", &fragmented),
    ]);
    std::fs::write(&out, svg).expect("cannot write the SVG");
    println!("wrote {out}");

    for (ptr, layout) in live {
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { (&heap).deallocate(ptr, layout) };
    }
}

/// The fill of a pool cell: hue by size class, lightness by occupancy.
fn colour(class: usize, occupancy: f64) -> String {
    let hue = (class * 360 / 32 + 200) % 360;
    let light = 88.0 - 55.0 * occupancy;
    format!("hsl({hue},70%,{light:.0}%)")
}

fn render(panels: &[(&str, &Vec<ArenaInfo>)]) -> String {
    let pools = pymalloc::Arena::POOLS;
    let panel_w = LABEL + pools * (CELL + GAP);
    let rows = panels.iter().map(|p| p.1.len()).max().unwrap_or(0);
    let legend_h = 46;
    let width = MARGIN * 2 + panels.len() * panel_w + (panels.len() - 1) * MARGIN;
    let height = MARGIN * 2 + 24 + rows * (CELL + GAP) + legend_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, (title, arenas)) in panels.iter().enumerate() {
        let x0 = MARGIN + i * (panel_w + MARGIN);
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{}" font-size="13" font-weight="bold">{title}</text>"#,
            MARGIN + 4
        );
        for (row, arena) in arenas.iter().enumerate() {
            let y = MARGIN + 16 + row * (CELL + GAP);
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end" fill="#555">{}</text>"##,
                x0 + LABEL - 6,
                y + CELL - 1,
                if arena.spare {
                    "spare".to_string()
                } else {
                    format!("{row}")
                }
            );
            for (col, pool) in arena.pools.iter().enumerate() {
                let x = x0 + LABEL + col * (CELL + GAP);
                let fill = match pool.class {
                    Some(class) => colour(
                        class,
                        pool.blocks_in_use as f64 / pool.capacity.max(1) as f64,
                    ),
                    None => "#eee".to_string(),
                };
                let _ = writeln!(
                    s,
                    r#"<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="{fill}"/>"#
                );
            }
        }
    }
    // Legend: a hue per size class, a shade per occupancy.
    let ly = height - MARGIN - legend_h + 16;
    let _ = writeln!(
        s,
        r#"<text x="{MARGIN}" y="{ly}">size class (block size), at full occupancy:</text>"#
    );
    for class in 0..32 {
        let x = MARGIN + class * 26;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="24" height="10" fill="{}"/><text x="{}" y="{}" font-size="8" text-anchor="middle">{}</text>"#,
            ly + 6,
            colour(class, 1.0),
            x + 12,
            ly + 26,
            16 * (class + 1)
        );
    }
    let ox = MARGIN + 32 * 26 + 30;
    let _ = writeln!(
        s,
        r#"<text x="{ox}" y="{ly}">occupancy (64 B class):</text>"#
    );
    for (k, occ) in [0.0, 0.25, 0.5, 0.75, 1.0].iter().enumerate() {
        let x = ox + k * 34;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="30" height="10" fill="{}"/><text x="{}" y="{}" font-size="8" text-anchor="middle">{:.0}%</text>"#,
            ly + 6,
            colour(3, *occ),
            x + 15,
            ly + 26,
            occ * 100.0
        );
    }
    let gx = ox + 5 * 34 + 20;
    let _ = writeln!(
        s,
        r##"<rect x="{gx}" y="{}" width="10" height="10" fill="#eeeeee"/><text x="{}" y="{}">free pool</text>"##,
        ly + 6,
        gx + 14,
        ly + 15
    );
    s.push_str("</svg>\n");
    s
}

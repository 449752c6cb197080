//! Snapshots of the live traces, symbols, statistics and their text, as
//! Python's `tracemalloc.Snapshot`, `Statistic` and `StatisticDiff`.

use super::capture::MAX_CAPTURE;
use super::hook::{self, Busy, ONE};
use super::table::{TRACER, TbCopy};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// One frame of a traceback: a source line and its function.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    /// The source file, as the debug information names it (`"<unknown>"`
    /// without it).
    pub filename: Arc<str>,
    /// The line (0 if unknown).
    pub lineno: u32,
    /// The function, demangled, without its hash (empty if unknown).
    pub function: Arc<str>,
}

/// `file:line`, as Python prints a frame.
impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.filename, self.lineno)
    }
}

/// Where a block was allocated: frames, most recent call first (the
/// allocator's own frames left out). Displays as its first frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Traceback(Arc<[Frame]>);

impl Traceback {
    /// The frames, most recent call first.
    pub fn frames(&self) -> &[Frame] {
        &self.0
    }

    /// One line per frame, most recent call first, as Python's
    /// `Traceback.format()`: `  File "src/main.rs", line 12, in app::main`.
    pub fn format(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|fr| {
                format!(
                    "  File \"{}\", line {}, in {}",
                    fr.filename, fr.lineno, fr.function
                )
            })
            .collect()
    }

    fn truncated(&self, n: usize) -> Traceback {
        Traceback(self.0[..n.min(self.0.len())].into())
    }
}

impl fmt::Display for Traceback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.first() {
            Some(frame) => frame.fmt(f),
            None => f.write_str("<unknown>:0"),
        }
    }
}

/// Live blocks with one traceback in a [`Snapshot`]: their bytes and
/// number (estimates when sampling).
#[derive(Clone, Debug)]
pub struct Trace {
    /// Where they were allocated.
    pub traceback: Traceback,
    /// Bytes.
    pub size: usize,
    /// Blocks.
    pub count: usize,
}

/// How [`Snapshot::statistics`] groups traces (Python's `key_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// By the first frame (`"lineno"`).
    Lineno,
    /// By the first frame's file (`"filename"`).
    Filename,
    /// By whole traceback (`"traceback"`).
    Traceback,
}

/// Live memory of one group of a snapshot (Python's
/// `tracemalloc.Statistic`). Displays as Python prints it:
/// `examples/trace.rs:20: size=1000 KiB, count=100, average=10.0 KiB`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statistic {
    /// The group's traceback (one frame for [`Key::Lineno`], a frame with
    /// only the file for [`Key::Filename`]).
    pub traceback: Traceback,
    /// Bytes.
    pub size: usize,
    /// Blocks.
    pub count: usize,
}

impl fmt::Display for Statistic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: size={}, count={}",
            self.traceback,
            format_size(self.size as f64, false),
            self.count
        )?;
        if self.count > 0 {
            let average = self.size as f64 / self.count as f64;
            write!(f, ", average={}", format_size(average, false))?;
        }
        Ok(())
    }
}

/// The difference of one group between two snapshots (Python's
/// `tracemalloc.StatisticDiff`):
/// `examples/trace.rs:20: size=1000 KiB (+500 KiB), count=100 (+50), average=10.0 KiB`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatisticDiff {
    /// The group's traceback.
    pub traceback: Traceback,
    /// Bytes in the new snapshot.
    pub size: usize,
    /// New minus old bytes.
    pub size_diff: isize,
    /// Blocks in the new snapshot.
    pub count: usize,
    /// New minus old blocks.
    pub count_diff: isize,
}

impl fmt::Display for StatisticDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: size={} ({}), count={} ({:+})",
            self.traceback,
            format_size(self.size as f64, false),
            format_size(self.size_diff as f64, true),
            self.count,
            self.count_diff
        )?;
        if self.count > 0 {
            let average = self.size as f64 / self.count as f64;
            write!(f, ", average={}", format_size(average, false))?;
        }
        Ok(())
    }
}

/// A size as Python's `tracemalloc` prints it: three significant digits
/// (`12.5 KiB`), or up to five for the unit below (`9216 B`), with a sign
/// if asked.
///
/// ```
/// use pymalloc::trace::format_size;
/// assert_eq!(format_size(512.0, false), "512 B");
/// assert_eq!(format_size(12_800.0, false), "12.5 KiB");
/// assert_eq!(format_size(-3.0 * 1048576.0, true), "-3072 KiB");
/// assert_eq!(format_size(200.0 * 1048576.0, true), "+200 MiB");
/// ```
pub fn format_size(size: f64, sign: bool) -> String {
    let mut size = size;
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    for (i, unit) in units.iter().enumerate() {
        let last = i + 1 == units.len();
        if i > 0 && size.abs() < 100.0 {
            return if sign {
                format!("{size:+.1} {unit}")
            } else {
                format!("{size:.1} {unit}")
            };
        }
        if size.abs() < 10.0 * 1024.0 || last {
            return if sign {
                format!("{size:+.0} {unit}")
            } else {
                format!("{size:.0} {unit}")
            };
        }
        size /= 1024.0;
    }
    unreachable!("the last unit returns")
}

/// The first `n` items, one a line: `println!("{}", top(&stats, 10))`
/// prints as Python's `for stat in top_stats[:10]: print(stat)`.
#[derive(Debug)]
pub struct Top<'a, T>(&'a [T], usize);

/// See [`Top`].
pub fn top<T: fmt::Display>(items: &[T], n: usize) -> Top<'_, T> {
    Top(items, n)
}

impl<T: fmt::Display> fmt::Display for Top<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in self.0.iter().take(self.1) {
            writeln!(f, "{item}")?;
        }
        Ok(())
    }
}

/// The live traces at one moment (Python's `tracemalloc.Snapshot`),
/// grouped by traceback, symbols resolved.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    traces: Vec<Trace>,
    traceback_limit: usize,
    sample_mean: Option<usize>,
}

/// Takes a snapshot of the live traces (Python's
/// `tracemalloc.take_snapshot()`): copies them under the tracer's lock
/// without allocating there, then resolves their symbols (which allocates,
/// untraced). Empty if tracing is off.
pub fn take_snapshot() -> Snapshot {
    let traceback_limit = hook::get_traceback_limit();
    let sample_mean = hook::sample_mean();
    let Some(_busy) = Busy::enter() else {
        return Snapshot::default();
    };
    let (mut tbs, mut ips) = (Vec::<TbCopy>::new(), Vec::<usize>::new());
    loop {
        let (need_tbs, need_ips) = TRACER.lock().live_sizes();
        // Some room for traces taken meanwhile.
        tbs.reserve(need_tbs + need_tbs / 8 + 16);
        ips.reserve(need_ips + need_ips / 8 + 256);
        if TRACER.lock().copy_live(&mut tbs, &mut ips) {
            break;
        }
    }
    let mut cache = HashMap::new();
    let traces = tbs
        .iter()
        .map(|c| Trace {
            traceback: resolve_cached(&ips[c.start..c.start + c.len], traceback_limit, &mut cache),
            size: c.bytes as usize,
            count: ((c.count + ONE / 2) / ONE) as usize,
        })
        .collect();
    Snapshot {
        traces,
        traceback_limit,
        sample_mean,
    }
}

/// The traceback where live block `ptr` was allocated, if it is traced
/// (Python's `tracemalloc.get_object_traceback()`). `ptr` is the block's
/// address as the heap returned it.
///
/// ```
/// # let _serial = pymalloc::trace::tests_serial();
/// use pymalloc::trace;
/// let heap = pymalloc::PrivateHeap::new();
/// trace::start(4);
/// let b = allocator_api2::boxed::Box::new_in(7u64, &heap);
/// let tb = trace::get_object_traceback(&*b as *const u64 as *const u8).unwrap();
/// // With debug information, the line above:
/// println!("{tb}"); // src/main.rs:5
/// assert!(!tb.frames().is_empty());
/// trace::stop();
/// ```
pub fn get_object_traceback(ptr: *const u8) -> Option<Traceback> {
    let mut ips = [0usize; MAX_CAPTURE];
    let n = hook::traceback_of(ptr.addr(), &mut ips)?;
    let _busy = Busy::enter()?;
    Some(Traceback(
        resolve(&ips[..n], hook::get_traceback_limit()).into(),
    ))
}

/// The frames of raw traceback `ips` (innermost first; inlined calls
/// expanded), the allocator's leading frames dropped, at most `limit`.
pub(super) fn resolve(ips: &[usize], limit: usize) -> Vec<Frame> {
    let mut cache = HashMap::new();
    resolve_cached(ips, limit, &mut cache).0.to_vec()
}

/// `resolve`, with each address's frames kept in `cache`.
fn resolve_cached(
    ips: &[usize],
    limit: usize,
    cache: &mut HashMap<usize, Arc<[Frame]>>,
) -> Traceback {
    let mut frames = Vec::new();
    let mut outside = false;
    for &ip in ips {
        let at = cache.entry(ip).or_insert_with(|| symbols(ip));
        for frame in at.iter() {
            outside = outside || !(is_allocator(&frame.function) || is_std(&frame.filename));
            if outside {
                frames.push(frame.clone());
            }
        }
        if frames.len() >= limit {
            break;
        }
    }
    frames.truncate(limit);
    if frames.is_empty() {
        frames.push(Frame {
            filename: "<unknown>".into(),
            lineno: 0,
            function: "".into(),
        });
    }
    Traceback(frames.into())
}

/// The frames at return address `ip`, innermost (inlined) first.
fn symbols(ip: usize) -> Arc<[Frame]> {
    let mut out = Vec::new();
    #[cfg(not(miri))]
    backtrace::resolve(core::ptr::without_provenance_mut(ip), |s| {
        out.push(Frame {
            filename: s
                .filename()
                .map(|p| relative(p).to_string_lossy().into())
                .unwrap_or_else(|| "<unknown>".into()),
            lineno: s.lineno().unwrap_or(0),
            function: s
                .name()
                .map(|n| format!("{n:#}").into())
                .unwrap_or_else(|| "".into()),
        });
    });
    if out.is_empty() {
        out.push(Frame {
            filename: "<unknown>".into(),
            lineno: 0,
            function: format!("{ip:#x}").into(),
        });
    }
    out.into()
}

/// `path` relative to the current directory if it lies under it (as
/// Python shows the files of its working directory).
#[cfg(not(miri))]
fn relative(path: &std::path::Path) -> &std::path::Path {
    static CWD: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    match CWD.get_or_init(|| std::env::current_dir().ok()) {
        Some(cwd) => path.strip_prefix(cwd).unwrap_or(path),
        None => path,
    }
}

/// Whether a source file is Rust's standard library (`/rustc/<commit>/library/…`
/// as the toolchain's debug information names it): `format!`'s and
/// collections' frames, whatever their function's name (`<u64 as
/// core::fmt::Display>::fmt`).
fn is_std(filename: &str) -> bool {
    filename.starts_with("/rustc/") && filename.contains("/library/")
}

/// Whether a function belongs to the allocator or std's allocation shims:
/// its leading frames are left out of tracebacks.
fn is_allocator(function: &str) -> bool {
    let f = function.trim_start_matches(['<', '&']);
    const RUST: [&str; 11] = [
        "pymalloc::",
        "pymalloc_capi::",
        "pymalloc_preload::",
        "alloc::",
        "core::",
        "std::",
        "allocator_api2::",
        "backtrace::",
        "hashbrown::",
        "__rust",
        "__rg_",
    ];
    const C: [&str; 9] = [
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
    ];
    // Any allocator's methods (`<X as …::GlobalAlloc>::alloc`,
    // `<&mut A as …::Allocator>::grow`): a user's wrapper around the heap
    // too.
    let allocator_impl =
        f.contains(" as ") && (f.contains("::GlobalAlloc>::") || f.contains("::Allocator>::"));
    RUST.iter().any(|p| f.starts_with(p))
        || allocator_impl
        || f.starts_with("__rustc::")
        || f.starts_with("__rdl_")
        || f.starts_with("PyMem_")
        || f.starts_with("PyObject_Malloc")
        || f.starts_with("PyObject_Calloc")
        || f.starts_with("PyObject_Realloc")
        || f.starts_with("__libc_")
        || f.starts_with("_Unwind")
        || C.contains(&f)
}

impl Snapshot {
    /// The traces: live blocks grouped by traceback.
    pub fn traces(&self) -> &[Trace] {
        &self.traces
    }

    /// The frames kept per traceback when it was taken.
    pub fn traceback_limit(&self) -> usize {
        self.traceback_limit
    }

    /// The sampling mean it was taken with (`None`: exact).
    pub fn sample_mean(&self) -> Option<usize> {
        self.sample_mean
    }

    /// Bytes and blocks in all traces.
    pub fn total(&self) -> (usize, usize) {
        self.traces
            .iter()
            .fold((0, 0), |(s, c), t| (s + t.size, c + t.count))
    }

    /// Live memory grouped by `key`, biggest first (by size, then count),
    /// as Python's `Snapshot.statistics(key_type)`.
    pub fn statistics(&self, key: Key) -> Vec<Statistic> {
        let mut groups: HashMap<Traceback, (usize, usize)> = HashMap::new();
        for t in &self.traces {
            let g = groups.entry(group_of(&t.traceback, key)).or_default();
            g.0 += t.size;
            g.1 += t.count;
        }
        let mut stats: Vec<Statistic> = groups
            .into_iter()
            .map(|(traceback, (size, count))| Statistic {
                traceback,
                size,
                count,
            })
            .collect();
        stats.sort_by(|a, b| (b.size, b.count, &b.traceback).cmp(&(a.size, a.count, &a.traceback)));
        stats
    }

    /// What changed from `old` to this snapshot, grouped by `key`, biggest
    /// change first (Python's `Snapshot.compare_to(old, key_type)`).
    pub fn compare_to(&self, old: &Snapshot, key: Key) -> Vec<StatisticDiff> {
        let old: HashMap<Traceback, (usize, usize)> = old
            .statistics(key)
            .into_iter()
            .map(|s| (s.traceback, (s.size, s.count)))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut diffs: Vec<StatisticDiff> = self
            .statistics(key)
            .into_iter()
            .map(|s| {
                let (size0, count0) = old.get(&s.traceback).copied().unwrap_or((0, 0));
                seen.insert(s.traceback.clone());
                StatisticDiff {
                    size_diff: s.size as isize - size0 as isize,
                    count_diff: s.count as isize - count0 as isize,
                    traceback: s.traceback,
                    size: s.size,
                    count: s.count,
                }
            })
            .collect();
        for (traceback, (size0, count0)) in old {
            if !seen.contains(&traceback) {
                diffs.push(StatisticDiff {
                    traceback,
                    size: 0,
                    size_diff: -(size0 as isize),
                    count: 0,
                    count_diff: -(count0 as isize),
                });
            }
        }
        diffs.sort_by(|a, b| {
            let k = |d: &StatisticDiff| {
                (
                    d.size_diff.unsigned_abs(),
                    d.size,
                    d.count_diff.unsigned_abs(),
                    d.count,
                )
            };
            k(b).cmp(&k(a)).then_with(|| b.traceback.cmp(&a.traceback))
        });
        diffs
    }

    /// The snapshot as folded stacks, one line per traceback, outermost
    /// frame first, weighted by live bytes: the input of flame graph tools
    /// (`inferno-flamegraph`, `flamegraph.pl`).
    pub fn folded(&self) -> String {
        super::flame::folded(self)
    }

    /// Writes an SVG flame graph of live memory (by bytes) to `out`, drawn
    /// by `inferno`. Cargo feature `trace-svg`.
    #[cfg(feature = "trace-svg")]
    pub fn write_flamegraph_svg<W: std::io::Write>(
        &self,
        title: &str,
        out: W,
    ) -> std::io::Result<()> {
        super::flame::svg(self, title, out)
    }
}

/// The group of traceback `tb` under `key`.
fn group_of(tb: &Traceback, key: Key) -> Traceback {
    match key {
        Key::Traceback => tb.clone(),
        Key::Lineno => tb.truncated(1),
        Key::Filename => Traceback(
            [Frame {
                filename: tb.0[0].filename.clone(),
                lineno: 0,
                function: "".into(),
            }]
            .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tb(file: &str, line: u32) -> Traceback {
        Traceback(
            [Frame {
                filename: file.into(),
                lineno: line,
                function: "f".into(),
            }]
            .into(),
        )
    }

    #[test]
    fn sizes_print_as_python_prints_them() {
        assert_eq!(format_size(0.0, false), "0 B");
        assert_eq!(format_size(10_239.0, false), "10239 B");
        assert_eq!(format_size(10_240.0, false), "10.0 KiB");
        assert_eq!(format_size(-10_240.0, true), "-10.0 KiB");
        assert_eq!(format_size(1_048_576.0, false), "1024 KiB");
        assert_eq!(format_size(100.0 * 1_048_576.0, false), "100 MiB");
        assert_eq!(format_size(5.0, true), "+5 B");
    }

    #[test]
    fn statistics_group_and_compare() {
        let old = Snapshot {
            traces: vec![
                Trace {
                    traceback: tb("a.rs", 1),
                    size: 100,
                    count: 1,
                },
                Trace {
                    traceback: tb("b.rs", 2),
                    size: 50,
                    count: 5,
                },
            ],
            traceback_limit: 1,
            sample_mean: None,
        };
        let mut new = old.clone();
        new.traces.push(Trace {
            traceback: tb("a.rs", 1),
            size: 900,
            count: 9,
        });
        new.traces.remove(1);
        let stats = new.statistics(Key::Lineno);
        assert_eq!(stats.len(), 1);
        assert_eq!((stats[0].size, stats[0].count), (1000, 10));
        assert_eq!(
            stats[0].to_string(),
            "a.rs:1: size=1000 B, count=10, average=100 B"
        );
        let diff = new.compare_to(&old, Key::Lineno);
        assert_eq!(
            diff.iter()
                .map(|d| (d.size_diff, d.count_diff))
                .collect::<Vec<_>>(),
            vec![(900, 9), (-50, -5)]
        );
        assert_eq!(
            diff[0].to_string(),
            "a.rs:1: size=1000 B (+900 B), count=10 (+9), average=100 B"
        );
        assert_eq!(
            diff[1].to_string(),
            "b.rs:2: size=0 B (-50 B), count=0 (-5)"
        );
        assert_eq!(
            top(&stats, 5).to_string(),
            "a.rs:1: size=1000 B, count=10, average=100 B\n"
        );
    }

    #[test]
    fn allocator_frames_are_recognised() {
        for f in [
            "pymalloc::trace::hook::record",
            "<pymalloc::heap::PrivateHeap as core::alloc::global::GlobalAlloc>::alloc",
            "<&pymalloc::heap::PrivateHeap as allocator_api2::stable::alloc::Allocator>::allocate",
            "alloc::raw_vec::RawVec<T,A>::grow_one",
            "__rustc::__rust_alloc",
            "__rust_alloc",
            "malloc",
            "PyMem_Malloc",
            "<app::Counting as core::alloc::global::GlobalAlloc>::alloc",
            "<&mut A as allocator_api2::alloc::Allocator>::grow",
        ] {
            assert!(is_allocator(f), "{f}");
        }
        for f in [
            "trace::main",
            "app::leak::{{closure}}",
            "main",
            "mallocator::x",
        ] {
            assert!(!is_allocator(f), "{f}");
        }
    }
}

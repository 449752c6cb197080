//! Flame graphs of live memory: folded stacks (the text every flame graph
//! tool reads), and an SVG drawn by `inferno` (feature `trace-svg`).

use super::snapshot::{Frame, Snapshot};
use std::collections::BTreeMap;
use std::fmt::Write;

/// A frame's name in a stack: its function (short of its crate path's
/// generic noise), and for the allocation site its line too. `;` and the
/// last space are the format's separators: they are replaced.
fn frame_name(frame: &Frame, leaf: bool) -> String {
    let function = if frame.function.is_empty() {
        "?"
    } else {
        &frame.function
    };
    let mut name = if leaf {
        let file = frame.filename.rsplit('/').next().unwrap_or("");
        format!("{function} ({file}:{})", frame.lineno)
    } else {
        function.to_string()
    };
    name = name.replace(';', ":");
    name
}

/// One line per distinct stack, outermost frame first, `frame;frame bytes`;
/// lines sorted, equal stacks merged.
pub(super) fn folded(snapshot: &Snapshot) -> String {
    let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
    for t in snapshot.traces() {
        let frames = t.traceback.frames();
        let stack = frames
            .iter()
            .enumerate()
            .rev()
            .map(|(i, f)| frame_name(f, i == 0))
            .collect::<Vec<_>>()
            .join(";");
        *stacks.entry(stack).or_default() += t.size;
    }
    let mut out = String::new();
    for (stack, bytes) in stacks {
        if bytes > 0 {
            let _ = writeln!(out, "{stack} {bytes}");
        }
    }
    out
}

/// Draws the folded stacks with `inferno`, widths in bytes.
#[cfg(feature = "trace-svg")]
pub(super) fn svg<W: std::io::Write>(
    snapshot: &Snapshot,
    title: &str,
    out: W,
) -> std::io::Result<()> {
    use inferno::flamegraph::{self, Options, Palette, color::BasicPalette};
    let folded = folded(snapshot);
    let mut options = Options::default();
    options.title = title.to_string();
    options.count_name = "bytes".to_string();
    options.colors = Palette::Basic(BasicPalette::Mem);
    options.deterministic = true;
    flamegraph::from_lines(&mut options, folded.lines(), out).map_err(std::io::Error::other)
}

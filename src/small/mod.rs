//! Layer 2: the small-object allocator (placeholder, filled below).
pub(crate) mod arena;
pub(crate) mod pool;
pub(crate) mod size_class;
pub use pool::SmallStats;

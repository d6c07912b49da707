//! A value alone on its cache lines.

use std::ops::Deref;

/// Keeps `T` off the cache lines of its neighbours, so a word written on
/// every call (the window cursor, the `Arc` counts) does not evict a word
/// only read (the state word) from the other cores' caches. 128 bytes: two
/// lines, because x86 prefetches lines in adjacent pairs.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> Deref for CachePadded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

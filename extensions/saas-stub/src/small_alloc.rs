//! A size-class allocator for the component.
//!
//! A call allocates a few dozen small blocks and frees them all before the next call: the
//! request's strings (written by the host through `cabi_realloc`, freed when the request is
//! dropped) and the answer's strings (freed by the post-return). Through the default
//! allocator each of those is `__rust_alloc` → `malloc` → wasi-libc's dlmalloc, about a
//! third of the guest's time in a warm `estimate-cost`. Here a block of up to
//! [`MAX_SMALL`] bytes is taken from, and returned to, a free list per power-of-two size:
//! a few instructions each way. Larger or over-aligned blocks go to the system allocator.
//!
//! Freed small blocks are kept for reuse, never returned: the component's memory stays at
//! its peak small-block use (the host bounds it and recycles instances anyway).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// The largest block served from the size classes.
pub const MAX_SMALL: usize = 2048;
/// The smallest block (and the alignment every block has).
const MIN_BLOCK: usize = 16;
/// Size classes: 16, 32, …, 2048 bytes.
const CLASSES: usize = 8;
/// Small blocks are carved from chunks of this size taken from the system allocator.
const CHUNK: usize = 32 * 1024;

/// The size class of `layout`, or `None` for the system allocator.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if size > MAX_SMALL || layout.align() > MIN_BLOCK {
        return None;
    }
    if size <= MIN_BLOCK {
        return Some(0);
    }
    // 17..=32 → 1, 33..=64 → 2, …
    Some((size - 1).ilog2() as usize + 1 - MIN_BLOCK.ilog2() as usize)
}

struct State {
    /// Head of each class's free list; a free block's first word points to the next one.
    free: [*mut u8; CLASSES],
    /// The unused rest of the current chunk.
    bump: *mut u8,
    end: *mut u8,
}

/// The allocator: per-class free lists over chunks of the system allocator.
pub struct SizeClasses {
    state: UnsafeCell<State>,
}

impl SizeClasses {
    /// An empty allocator (no memory taken until the first allocation).
    pub const fn new() -> Self {
        Self {
            state: UnsafeCell::new(State {
                free: [ptr::null_mut(); CLASSES],
                bump: ptr::null_mut(),
                end: ptr::null_mut(),
            }),
        }
    }
}

impl Default for SizeClasses {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: the allocator is only installed where there is a single thread (a wasm32
// component without the atomics feature); elsewhere (native tests) it is not `Sync`.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl Sync for SizeClasses {}

unsafe impl GlobalAlloc for SizeClasses {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { System.alloc(layout) };
        };
        // SAFETY: single-threaded (see `Sync` above), and no reference to the state
        // outlives this call.
        let s = unsafe { &mut *self.state.get() };
        let head = s.free[class];
        if !head.is_null() {
            // SAFETY: `head` is a free block of this class; its first word is the next one.
            s.free[class] = unsafe { head.cast::<*mut u8>().read() };
            return head;
        }
        let size = MIN_BLOCK << class;
        if (s.end as usize) - (s.bump as usize) < size {
            // The rest of the old chunk (less than one block of this class) is abandoned.
            // SAFETY: a valid, non-zero layout.
            let chunk =
                unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, MIN_BLOCK)) };
            if chunk.is_null() {
                return chunk;
            }
            s.bump = chunk;
            // SAFETY: one past the end of the chunk just allocated.
            s.end = unsafe { chunk.add(CHUNK) };
        }
        let block = s.bump;
        // SAFETY: `size` bytes fit between `bump` and `end` (checked above).
        s.bump = unsafe { block.add(size) };
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: a block the system allocator gave with this layout.
            return unsafe { System.dealloc(block, layout) };
        };
        // SAFETY: as in `alloc`.
        let s = unsafe { &mut *self.state.get() };
        // SAFETY: the block is at least 16 bytes, 16-aligned, and no longer used.
        unsafe { block.cast::<*mut u8>().write(s.free[class]) };
        s.free[class] = block;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` is valid with this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // The block already has room for the new size.
            (Some(old), Some(new)) if old == new => block,
            // SAFETY: both sizes are the system allocator's.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: a valid layout; the copy stays within both blocks.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn sizes_map_to_the_smallest_class_that_holds_them() {
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 1)), Some(1));
        assert_eq!(class_of(layout(32, 4)), Some(1));
        assert_eq!(class_of(layout(33, 1)), Some(2));
        assert_eq!(class_of(layout(MAX_SMALL, 16)), Some(CLASSES - 1));
        assert_eq!(class_of(layout(MAX_SMALL + 1, 1)), None);
        assert_eq!(class_of(layout(8, 32)), None);
        for size in 1..=MAX_SMALL {
            let class = class_of(layout(size, 1)).unwrap();
            assert!(MIN_BLOCK << class >= size, "{size} in class {class}");
            assert!(class == 0 || MIN_BLOCK << (class - 1) < size, "{size}");
        }
    }

    #[test]
    fn blocks_are_aligned_distinct_reused_and_keep_their_contents() {
        let a = SizeClasses::new();
        unsafe {
            let mut blocks = Vec::new();
            for (i, size) in [1usize, 7, 16, 17, 100, 1000, 2048, 3000, 40_000]
                .into_iter()
                .cycle()
                .take(200)
                .enumerate()
            {
                let l = layout(size, if i % 2 == 0 { 16 } else { 1 });
                let p = a.alloc(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % l.align(), 0);
                ptr::write_bytes(p, i as u8, size);
                blocks.push((p, l, i as u8));
            }
            for &(p, l, fill) in &blocks {
                assert!(
                    (0..l.size()).all(|k| *p.add(k) == fill),
                    "block overwritten"
                );
            }
            let (p, l, _) = blocks[4];
            a.dealloc(p, l);
            assert_eq!(a.alloc(l), p, "a freed block is reused first");
            ptr::write_bytes(p, 4, l.size());
            // Growing within the class keeps the block; past it moves the contents.
            let grown = a.realloc(p, l, 128);
            assert_eq!(grown, p);
            let moved = a.realloc(grown, layout(128, l.align()), 129);
            assert_ne!(moved, p);
            assert!((0..100).all(|k| *moved.add(k) == 4));
            a.dealloc(moved, layout(129, l.align()));
            for (p, l, _) in blocks.into_iter().filter(|&(q, _, _)| q != p) {
                a.dealloc(p, l);
            }
        }
    }
}

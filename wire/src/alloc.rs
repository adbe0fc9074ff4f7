//! A global allocator that survives hostile array counts.
//!
//! `kafka-protocol` sizes each decoded array with `Vec::with_capacity(n)`,
//! where `n` comes straight from the request. A 26-byte request claiming two
//! billion elements therefore asks for tens of gigabytes before decoding
//! notices the bytes are missing, and a refused allocation aborts the
//! process: one packet could crash a broker (found by `wire/fuzz`).
//!
//! This allocator serves large allocations with `mmap(MAP_NORESERVE)`: the
//! kernel hands out address space without committing memory, so an untouched
//! capacity costs nothing. Decoding then fails on the missing bytes and the
//! mapping is returned. Legitimately large buffers work as before; their pages
//! are committed as they are written, like any other memory under Linux
//! overcommit. Everything else goes to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped lazily.
const LAZY_THRESHOLD: usize = 64 << 20;
const PAGE: usize = 4096;

pub struct LazyLargeAlloc;

impl LazyLargeAlloc {
    fn lazy(layout: &Layout) -> bool {
        layout.size() >= LAZY_THRESHOLD && layout.align() <= PAGE
    }
}

// SAFETY: mmap returns page-aligned memory (alignment <= PAGE is checked),
// anonymous mappings are zero-filled, and `dealloc` routes by the same
// `Layout` test as `alloc`, so each pointer is freed the way it was obtained.
unsafe impl GlobalAlloc for LazyLargeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::lazy(&layout) {
            return System.alloc(layout);
        }
        let p = libc::mmap(
            std::ptr::null_mut(),
            layout.size(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p as *mut u8
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::lazy(&layout) {
            // Fresh anonymous mappings are already zero.
            self.alloc(layout)
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if Self::lazy(&layout) {
            libc::munmap(ptr as *mut libc::c_void, layout.size());
        } else {
            System.dealloc(ptr, layout);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        if !Self::lazy(&layout) && !Self::lazy(&new_layout) {
            return System.realloc(ptr, layout, new_size);
        }
        let new = self.alloc(new_layout);
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_untouched_capacity_costs_nothing_and_small_ones_work() {
        let a = LazyLargeAlloc;
        unsafe {
            // 64 GiB: far beyond this machine's memory, never touched.
            let big = Layout::from_size_align(64 << 30, 8).unwrap();
            let p = a.alloc(big);
            assert!(!p.is_null());
            *p = 7; // the first page becomes real on touch
            assert_eq!(*p, 7);
            a.dealloc(p, big);

            let small = Layout::from_size_align(100, 8).unwrap();
            let q = a.alloc_zeroed(small);
            assert_eq!(*q.add(99), 0);
            // Growing across the threshold keeps the contents.
            *q = 42;
            let r = a.realloc(q, small, LAZY_THRESHOLD * 2);
            assert_eq!(*r, 42);
            let r2 = a.realloc(
                r,
                Layout::from_size_align(LAZY_THRESHOLD * 2, 8).unwrap(),
                50,
            );
            assert_eq!(*r2, 42);
            a.dealloc(r2, Layout::from_size_align(50, 8).unwrap());
        }
    }
}

//! Large buffers kept from one request for the next.
//!
//! Each image costs a 2.7 MB decoded frame, a 4.9 MB input tensor and a 2.7 MB
//! answer. Freshly allocated, every one of their pages is faulted in and zeroed by
//! the kernel: a profile of the client put a third of its CPU there. A run keeps
//! one buffer of each kind per request in flight and hands them round instead.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Buffers handed back after use. Their contents are stale and their lengths
/// whatever the last user left: a taker overwrites what it reads. Each buffer
/// travels with a memo `M` of what its contents are (the letterbox's padding, say),
/// which its users keep true.
#[derive(Debug)]
pub struct Recycler<T, M = ()> {
    free: Mutex<Vec<(Vec<T>, M)>>,
    /// More than this many idle buffers are freed, not kept.
    max_kept: usize,
}

impl<T: Send + 'static, M: Default + Send + 'static> Recycler<T, M> {
    pub fn new(max_kept: usize) -> Arc<Recycler<T, M>> {
        Arc::new(Recycler {
            free: Mutex::new(Vec::new()),
            max_kept,
        })
    }

    /// A buffer from an earlier use, or a new empty one.
    pub fn take(&self) -> Vec<T> {
        self.take_with_memo().0
    }

    fn take_with_memo(&self) -> (Vec<T>, M) {
        lock(&self.free).pop().unwrap_or_default()
    }

    /// Keeps `buffer` for a later [`Recycler::take`].
    pub fn give(&self, buffer: Vec<T>) {
        self.give_with_memo(buffer, M::default());
    }

    fn give_with_memo(&self, buffer: Vec<T>, memo: M) {
        if buffer.capacity() == 0 {
            return;
        }
        let mut free = lock(&self.free);
        if free.len() < self.max_kept {
            free.push((buffer, memo));
        }
    }

    /// [`Recycler::take`], given back by itself (with its memo) when dropped.
    pub fn take_guarded(self: &Arc<Self>) -> Recycled<T, M> {
        let (buffer, memo) = self.take_with_memo();
        Recycled {
            buffer,
            memo,
            home: self.clone(),
        }
    }

    #[cfg(test)]
    fn n_kept(&self) -> usize {
        lock(&self.free).len()
    }
}

/// The guard of a mutex whose holder panicked: the lists guarded here stay valid
/// whatever a holder was doing.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A buffer that goes back to its [`Recycler`] when dropped: the owner behind a
/// `Bytes` view that the HTTP stack drops whenever it is done with the body.
#[derive(Debug)]
pub struct Recycled<T: Send + 'static, M: Default + Send + 'static = ()> {
    buffer: Vec<T>,
    /// What the buffer holds, as its users last recorded it.
    pub memo: M,
    home: Arc<Recycler<T, M>>,
}

impl<T: Send + 'static, M: Default + Send + 'static> Recycled<T, M> {
    /// The buffer and its memo, both writable at once.
    pub fn with_memo(&mut self) -> (&mut Vec<T>, &mut M) {
        (&mut self.buffer, &mut self.memo)
    }
}

impl<T: Send + 'static, M: Default + Send + 'static> Deref for Recycled<T, M> {
    type Target = Vec<T>;

    fn deref(&self) -> &Vec<T> {
        &self.buffer
    }
}

impl<T: Send + 'static, M: Default + Send + 'static> DerefMut for Recycled<T, M> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.buffer
    }
}

impl<T: Send + 'static, M: Default + Send + 'static> AsRef<[T]> for Recycled<T, M> {
    fn as_ref(&self) -> &[T] {
        &self.buffer
    }
}

impl<T: Send + 'static, M: Default + Send + 'static> AsMut<[T]> for Recycled<T, M> {
    fn as_mut(&mut self) -> &mut [T] {
        &mut self.buffer
    }
}

impl<T: Send + 'static, M: Default + Send + 'static> Drop for Recycled<T, M> {
    fn drop(&mut self) {
        self.home.give_with_memo(
            std::mem::take(&mut self.buffer),
            std::mem::take(&mut self.memo),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_with_their_memory_up_to_the_limit() {
        let recycler = Recycler::<u8>::new(2);
        let mut first = recycler.take_guarded();
        first.resize(1000, 7);
        let address = first.as_ptr();
        drop(first);
        let again = recycler.take();
        assert_eq!(again.as_ptr(), address, "the same allocation comes back");
        assert_eq!(again.len(), 1000);
        for _ in 0..3 {
            recycler.give(vec![1; 10]);
        }
        recycler.give(Vec::new());
        assert_eq!(recycler.n_kept(), 2);
    }

    #[test]
    fn a_buffer_comes_back_with_its_memo() {
        let recycler = Recycler::<u8, String>::new(1);
        let mut first = recycler.take_guarded();
        assert_eq!(first.memo, "");
        first.resize(10, 1);
        first.memo.push_str("ten ones");
        drop(first);
        let again = recycler.take_guarded();
        assert_eq!((again.len(), again.memo.as_str()), (10, "ten ones"));
    }
}

//! Locks that shrug off poisoning.
//!
//! stmp's locks guard small maps and lists that every critical section leaves consistent: no
//! application code runs while one is held, or it runs under `catch_unwind`. A panic on the
//! thread that held one therefore says nothing about the data, and a poisoned lock is used as
//! it is, instead of turning one panic into a panic in every later caller.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks `lock`, poisoned or not.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks `lock`, poisoned or not.
pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_still_hands_out_its_data() {
        let mutex = Mutex::new(vec![1]);
        let rwlock = RwLock::new(vec![1]);
        std::thread::scope(|scope| {
            let panicked = scope
                .spawn(|| {
                    let _held = (mutex.lock().unwrap(), rwlock.write().unwrap());
                    panic!("a panic while both are held");
                })
                .join();
            assert!(panicked.is_err());
        });
        assert!(mutex.is_poisoned() && rwlock.is_poisoned());
        lock(&mutex).push(2);
        write(&rwlock).push(2);
        assert_eq!(*lock(&mutex), [1, 2]);
        assert_eq!(*read(&rwlock), [1, 2]);
    }
}

//! Numbered work items on a pool of threads, their results taken in order on the calling
//! thread as soon as each is ready, with a bounded look-ahead.
//!
//! The matcher cuts its targets into fixed chunks (so that the output does not depend on the
//! thread count) and each chunk's result must be stitched and written in order. Running the
//! chunks in batches with a barrier between them leaves threads idle whenever one chunk of a
//! batch is slow (a window of fresh bytes costs several times a window of matches); here a
//! thread takes the next item as soon as it is free, up to `lookahead` items past the oldest
//! result not yet taken, which bounds the memory held by results (and, for the caller, by the
//! target pages they touch).

use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// Shared state of one [`run_ordered`] call.
struct Board<T> {
    /// Results not yet taken, by item.
    done: Vec<Option<T>>,
    /// The next item a worker will start.
    next: usize,
    /// Items taken by the caller (all below this one).
    taken: usize,
    /// Set when the caller is finished (or failed): workers start nothing more.
    stop: bool,
    /// Set when a worker panicked: its item will never be done.
    lost_worker: bool,
}

struct Shared<T> {
    board: Mutex<Board<T>>,
    /// Workers wait here for room in the look-ahead.
    room: Condvar,
    /// The caller waits here for the next result.
    ready: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Board<T>> {
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the board when a worker unwinds, so that the caller does not wait for it forever.
struct WorkerGuard<'a, T>(&'a Shared<T>);

impl<T> Drop for WorkerGuard<'_, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().lost_worker = true;
            self.0.ready.notify_all();
        }
    }
}

/// Runs `work(state, item)` for every item in `0..items` on `threads` threads (each with its
/// own `state`, made by `new_state`), and calls `take(item, result)` on this thread for every
/// item in order, as soon as its result is ready. No item starts more than `lookahead` items
/// after the oldest result not yet taken. An error of `take` stops the work and is returned;
/// a panic of `work` is propagated.
pub(crate) fn run_ordered<S, T: Send>(
    items: usize,
    threads: usize,
    lookahead: usize,
    new_state: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, usize) -> T + Sync,
    mut take: impl FnMut(usize, T) -> io::Result<()>,
) -> io::Result<()> {
    let lookahead = lookahead.max(1);
    let shared = Shared {
        board: Mutex::new(Board {
            done: (0..items).map(|_| None).collect(),
            next: 0,
            taken: 0,
            stop: false,
            lost_worker: false,
        }),
        room: Condvar::new(),
        ready: Condvar::new(),
    };
    let threads = threads.clamp(1, items.max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let _guard = WorkerGuard(&shared);
                let mut state = new_state();
                loop {
                    let item = {
                        let mut board = shared.lock();
                        loop {
                            if board.stop || board.next >= items {
                                return;
                            }
                            if board.next < board.taken + lookahead {
                                break;
                            }
                            board = shared
                                .room
                                .wait(board)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                        board.next += 1;
                        board.next - 1
                    };
                    let result = work(&mut state, item);
                    shared.lock().done[item] = Some(result);
                    shared.ready.notify_all();
                }
            });
        }
        let taken = (|| {
            for item in 0..items {
                let result = {
                    let mut board = shared.lock();
                    loop {
                        if let Some(result) = board.done[item].take() {
                            break result;
                        }
                        if board.lost_worker {
                            return Err(io::Error::other("matcher worker panicked"));
                        }
                        board = shared
                            .ready
                            .wait(board)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                };
                take(item, result)?;
                shared.lock().taken = item + 1;
                shared.room.notify_all();
            }
            Ok(())
        })();
        shared.lock().stop = true;
        shared.room.notify_all();
        taken
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn results_are_taken_in_order_whatever_the_threads() {
        for threads in [1, 2, 3, 8] {
            let mut seen = Vec::new();
            run_ordered(
                50,
                threads,
                4,
                || (),
                |_, item| {
                    // Uneven work: early items are the slowest.
                    std::thread::yield_now();
                    item * 10
                },
                |item, result| {
                    seen.push((item, result));
                    Ok(())
                },
            )
            .unwrap();
            let expected: Vec<_> = (0..50).map(|i| (i, i * 10)).collect();
            assert_eq!(seen, expected, "{threads} threads");
        }
    }

    #[test]
    fn no_item_starts_beyond_the_lookahead() {
        let started = AtomicUsize::new(0);
        let mut worst = 0;
        run_ordered(
            40,
            4,
            3,
            || (),
            |_, item| {
                started.fetch_max(item + 1, Ordering::SeqCst);
            },
            |item, ()| {
                // Items started so far, beyond those taken (this one included).
                worst = worst.max(started.load(Ordering::SeqCst) - item);
                Ok(())
            },
        )
        .unwrap();
        assert!((1..=3).contains(&worst), "{worst} items in flight");
    }

    #[test]
    fn an_error_of_take_stops_the_work() {
        let ran = AtomicUsize::new(0);
        let err = run_ordered(
            1000,
            2,
            4,
            || (),
            |_, _| {
                ran.fetch_add(1, Ordering::SeqCst);
            },
            |item, ()| {
                if item == 5 {
                    Err(io::Error::other("disk full"))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert!(ran.load(Ordering::SeqCst) <= 5 + 4 + 2, "work went on");
    }

    #[test]
    fn a_panicking_worker_is_propagated_not_waited_for() {
        let outcome = std::panic::catch_unwind(|| {
            run_ordered(
                10,
                2,
                4,
                || (),
                |_, item| {
                    assert!(item != 3, "worker failure");
                },
                |_, ()| Ok(()),
            )
        });
        assert!(outcome.is_err());
    }

    #[test]
    fn no_items_is_fine() {
        run_ordered(0, 2, 4, || (), |_, _| (), |_, ()| Ok(())).unwrap();
    }

    #[test]
    fn each_worker_keeps_its_state() {
        let states = AtomicUsize::new(0);
        let mut total = 0;
        run_ordered(
            100,
            3,
            8,
            || {
                states.fetch_add(1, Ordering::SeqCst);
                0usize
            },
            |count, _| {
                *count += 1;
                *count
            },
            |_, n| {
                total += usize::from(n >= 1);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(total, 100);
        assert!(states.load(Ordering::SeqCst) <= 3);
    }
}

//! A tiny persistent thread pool for the kernels: `run_parallel(parts, task)` runs `task(0)` on
//! the calling thread and `task(1)`..`task(parts - 1)` on parked worker threads, and returns when
//! all parts are done.
//!
//! Why a persistent pool rather than `std::thread::scope`: spawning and joining a thread costs
//! about 20-40 µs here, while waking a parked worker costs a few µs. A 512³ GEMM takes about 3 ms,
//! so either would do for it, but the runtime calls many small kernels in a row (an LSTM step is a
//! 32x512x128 GEMM of about 50 µs), where a spawn per call would eat a large share of the gain.
//! Workers also keep their thread-local packing buffers alive between calls, so the large GEMM
//! packing buffers are not page-faulted in again on every call.
//!
//! Results never depend on this pool: callers split work into parts whose arithmetic does not
//! depend on which thread runs them or how many there are. When the pool is busy (another thread
//! is inside `run_parallel`, or a task calls `run_parallel` again), the parts simply run one after
//! another on the calling thread, which gives the same results without any deadlock.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// The most worker threads the pool starts, whatever a caller asks for.
pub const MAX_THREADS: usize = 64;

/// Runs `task(part)` for every part in `0..parts`, part 0 on the calling thread and the others on
/// pool workers, and returns once all have finished. A panic in any part is re-raised here after
/// every part has stopped, so the borrowed data of `task` is never used after this returns.
pub fn run_parallel(parts: usize, task: &(dyn Fn(usize) + Sync)) {
    let parts = parts.min(MAX_THREADS);
    if parts <= 1 {
        if parts == 1 {
            task(0);
        }
        return;
    }
    let pool = global_pool();
    let Ok(dispatch_guard) = pool.dispatch.try_lock() else {
        // Busy or nested: the same parts, serially, give the same results.
        (0..parts).for_each(task);
        return;
    };
    let workers = pool.workers_for(parts - 1);
    let latch = Arc::new(Latch::new(workers.len()));
    // SAFETY: the job holds a lifetime-erased pointer to `task`; this function does not return
    // (nor unwind) before every worker has finished running it, which `latch.wait` guarantees.
    let erased_task: *const (dyn Fn(usize) + Sync + 'static) =
        unsafe { std::mem::transmute(task as *const (dyn Fn(usize) + Sync)) };
    for (worker_index, worker) in workers.iter().enumerate() {
        worker.give(Job {
            task: erased_task,
            part: worker_index + 1,
            latch: Arc::clone(&latch),
        });
    }
    // Part 0, and any parts left without a worker, run here.
    let own_result = catch_unwind(AssertUnwindSafe(|| {
        task(0);
        (workers.len() + 1..parts).for_each(task);
    }));
    latch.wait();
    drop(dispatch_guard);
    if let Err(panic) = own_result {
        resume_unwind(panic);
    }
    if latch.panicked.load(Ordering::Acquire) != 0 {
        panic!("a kernel worker thread panicked");
    }
}

/// The number of threads to use when the caller says 0 ("as many as the machine has").
pub fn available_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |count| count.get())
        .min(MAX_THREADS)
}

struct Job {
    task: *const (dyn Fn(usize) + Sync + 'static),
    part: usize,
    latch: Arc<Latch>,
}

// SAFETY: the task is `Sync`, and `run_parallel` keeps it alive until the job has run.
unsafe impl Send for Job {}

/// Counts unfinished worker parts; the caller spins briefly, then sleeps on it until the count
/// reaches zero. The count changes only under the mutex, so a sleeping caller is never missed.
struct Latch {
    remaining: Mutex<usize>,
    remaining_hint: AtomicUsize,
    all_done: Condvar,
    panicked: AtomicUsize,
}

impl Latch {
    fn new(count: usize) -> Latch {
        Latch {
            remaining: Mutex::new(count),
            remaining_hint: AtomicUsize::new(count),
            all_done: Condvar::new(),
            panicked: AtomicUsize::new(0),
        }
    }

    fn count_down(&self) {
        let mut remaining = self
            .remaining
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *remaining -= 1;
        self.remaining_hint.store(*remaining, Ordering::Release);
        if *remaining == 0 {
            self.all_done.notify_all();
        }
    }

    fn wait(&self) {
        spin_until(|| self.remaining_hint.load(Ordering::Acquire) == 0);
        let mut remaining = self
            .remaining
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        while *remaining > 0 {
            remaining = self
                .all_done
                .wait(remaining)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }
}

/// How long a thread spins for an event before sleeping on a condition variable. Recurrent
/// networks dispatch a small GEMM per time step, tens of microseconds apart; parking and waking a
/// thread for each cost more than the work (measured: a 2-thread LSTM ran 2x slower than 1
/// thread). Spinning this long after each job keeps the pool warm across consecutive kernels and
/// costs at most this much CPU time when no more work comes.
const SPIN: std::time::Duration = std::time::Duration::from_micros(100);

fn spin_until(done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        if started.elapsed() > SPIN {
            return;
        }
        for _ in 0..64 {
            std::hint::spin_loop();
        }
    }
}

struct Worker {
    slot: Mutex<Option<Job>>,
    /// Set (under the slot's mutex) when a job is waiting, so an idle worker can spin on it.
    job_waiting: AtomicUsize,
    job_ready: Condvar,
}

impl Worker {
    fn give(&self, job: Job) {
        *self
            .slot
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(job);
        self.job_waiting.store(1, Ordering::Release);
        self.job_ready.notify_one();
    }

    fn serve(&self) {
        loop {
            spin_until(|| self.job_waiting.load(Ordering::Acquire) != 0);
            let job = {
                let mut slot = self
                    .slot
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner());
                loop {
                    if let Some(job) = slot.take() {
                        self.job_waiting.store(0, Ordering::Release);
                        break job;
                    }
                    slot = self
                        .job_ready
                        .wait(slot)
                        .unwrap_or_else(|poison| poison.into_inner());
                }
            };
            // SAFETY: see `run_parallel`: the task outlives the job.
            let task = unsafe { &*job.task };
            if catch_unwind(AssertUnwindSafe(|| task(job.part))).is_err() {
                job.latch.panicked.store(1, Ordering::Release);
            }
            job.latch.count_down();
        }
    }
}

struct Pool {
    dispatch: Mutex<()>,
    workers: Mutex<Vec<Arc<Worker>>>,
}

impl Pool {
    /// The first `count` workers, starting any that do not exist yet. If the system refuses a
    /// thread, fewer workers come back and `run_parallel` runs the missing parts itself.
    fn workers_for(&self, count: usize) -> Vec<Arc<Worker>> {
        let mut workers = self
            .workers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        while workers.len() < count {
            let worker = Arc::new(Worker {
                slot: Mutex::new(None),
                job_waiting: AtomicUsize::new(0),
                job_ready: Condvar::new(),
            });
            let served = Arc::clone(&worker);
            let spawned = std::thread::Builder::new()
                .name(format!("nnc-kernel-{}", workers.len() + 1))
                .spawn(move || served.serve());
            if spawned.is_err() {
                break;
            }
            workers.push(worker);
        }
        workers[..count.min(workers.len())].to_vec()
    }
}

fn global_pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        dispatch: Mutex::new(()),
        workers: Mutex::new(Vec::new()),
    })
}

/// A raw pointer that parts of a parallel task may share. Whoever creates it promises that the
/// parts write disjoint elements through it, and that it outlives the task.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SharedMutPtr(pub *mut f32);

impl SharedMutPtr {
    /// The pointer. (A method, so closures capture the whole `Sync` wrapper, not its field.)
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: see the type's doc; the creator guarantees disjoint writes.
unsafe impl Send for SharedMutPtr {}
unsafe impl Sync for SharedMutPtr {}

/// The `part`-th of `parts` near-equal contiguous pieces of `0..len`.
pub(crate) fn part_range(len: usize, parts: usize, part: usize) -> std::ops::Range<usize> {
    (part * len / parts)..((part + 1) * len / parts)
}

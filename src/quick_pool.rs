//! A second pair of hands for work of tens of microseconds.
//!
//! Rayon's idle workers sleep, and waking one costs about as long as a small fit's
//! first layer takes; called from outside the pool, rayon also parks the caller. Here
//! the caller does the work itself and helper threads that are already awake (they
//! spin for a short while after each job before they sleep) claim chunks beside it.
//! A helper that is slow to arrive costs nothing: the caller simply claims the chunks
//! itself, so the result and the worst case are those of the serial loop.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper keeps spinning for the next job before it sleeps: long
/// enough to span the gap between consecutive small fits, short enough not to steal a
/// core from other programs for long.
const SPIN: Duration = Duration::from_micros(200);
/// At most this many helper threads.
const MAX_HELPERS: usize = 3;

struct Job<'a> {
    /// Chunks claimed from the front (low 32 bits) and from the back (high 32 bits).
    claimed: AtomicU64,
    chunks: usize,
    work: &'a (dyn Fn(usize) + Sync),
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Claims and runs chunks until none are left: helpers from the front, the caller
    /// from the back. Which thread runs a chunk then changes little from one call to
    /// the next, so the lines a chunk writes tend to stay with one core.
    fn run(&self, from_back: bool) {
        loop {
            let mut claimed = self.claimed.load(SeqCst);
            let c = loop {
                let (front, back) = (claimed & 0xFFFF_FFFF, claimed >> 32);
                if (front + back) as usize >= self.chunks {
                    return;
                }
                let (c, next) = if from_back { (self.chunks - 1 - back as usize, claimed + (1 << 32)) } else { (front as usize, claimed + 1) };
                match self.claimed.compare_exchange_weak(claimed, next, SeqCst, SeqCst) {
                    Ok(_) => break c,
                    Err(now) => claimed = now,
                }
            };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.work)(c))).is_err() {
                self.panicked.store(true, SeqCst);
            }
        }
    }
}

struct Shared {
    /// The published job (a `Job` on the caller's stack), null when none.
    job: AtomicPtr<Job<'static>>,
    /// Helpers that may hold the published job: each counts itself in before it reads
    /// `job`, so a caller that withdrew the job and then sees 0 knows none holds it.
    holding: AtomicUsize,
    /// Bumped with each published job; idle helpers watch it.
    epoch: AtomicU64,
    /// One job at a time; a second caller meanwhile runs its loop alone.
    busy: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

fn shared() -> Option<&'static Shared> {
    static POOL: OnceLock<Option<&'static Shared>> = OnceLock::new();
    *POOL.get_or_init(|| {
        // As many hands as rayon has threads (RAYON_NUM_THREADS limits both), but few:
        // jobs of a few chunks gain little from more, and idle helpers spin.
        let helpers = rayon::current_num_threads().saturating_sub(1).min(MAX_HELPERS);
        if helpers == 0 {
            return None;
        }
        let s: &'static Shared = Box::leak(Box::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            holding: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 0..helpers {
            std::thread::Builder::new().name(format!("rote-quick-{i}")).spawn(move || helper(s)).ok()?;
        }
        Some(s)
    })
}

fn helper(s: &'static Shared) {
    IN_POOL.set(true);
    let mut seen = s.epoch.load(SeqCst);
    loop {
        let since = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(SeqCst) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) {
                continue;
            }
            // Every few microseconds: let other threads that want this core run.
            std::thread::yield_now();
            if since.elapsed() > SPIN {
                let mut guard = s.lock.lock().unwrap();
                s.sleepers.fetch_add(1, SeqCst);
                while s.epoch.load(SeqCst) == seen {
                    guard = s.wake.wait(guard).unwrap();
                }
                s.sleepers.fetch_sub(1, SeqCst);
                break;
            }
        }
        seen = s.epoch.load(SeqCst);
        s.holding.fetch_add(1, SeqCst);
        let job = s.job.load(SeqCst);
        if !job.is_null() {
            // SAFETY: the caller keeps the job alive until `holding` drops to 0 after it
            // has withdrawn the pointer, and this helper counted itself in first.
            unsafe { (*job).run(false) };
        }
        s.holding.fetch_sub(1, SeqCst);
    }
}

thread_local! {
    static IN_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work(c)` for every c in 0..chunks, once each, on the calling thread and on
/// whichever helpers are free to join. Inside rayon's pool (a sweep's parallel fits)
/// or with a single thread it is the plain loop.
pub fn for_each(chunks: usize, work: impl Fn(usize) + Sync) {
    let serial = || (0..chunks).for_each(&work);
    if chunks < 2 || rayon::current_thread_index().is_some() || IN_POOL.get() {
        return serial();
    }
    let Some(s) = shared() else { return serial() };
    if s.busy.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
        return serial();
    }
    let work: &(dyn Fn(usize) + Sync) = &work;
    assert!(chunks < 1 << 31, "too many chunks for one job");
    let job = Job { claimed: AtomicU64::new(0), chunks, work, panicked: AtomicBool::new(false) };
    // SAFETY (lifetime): the pointer is withdrawn, and every helper that may have read
    // it has let go, before `job` goes out of scope below.
    s.job.store(&job as *const Job as *mut Job<'static>, SeqCst);
    s.epoch.fetch_add(1, SeqCst);
    if s.sleepers.load(SeqCst) > 0 {
        let _guard = s.lock.lock().unwrap();
        s.wake.notify_all();
    }
    job.run(true);
    s.job.store(std::ptr::null_mut(), SeqCst);
    while s.holding.load(SeqCst) != 0 {
        std::hint::spin_loop();
    }
    s.busy.store(false, SeqCst);
    if job.panicked.load(SeqCst) {
        panic!("a chunk of quick_pool::for_each panicked");
    }
}

/// Runs `a` and `b`, in parallel when a helper is free, and returns both results.
pub fn join<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    let tasks = (std::sync::Mutex::new(Some(a)), std::sync::Mutex::new(Some(b)));
    let results = (std::sync::Mutex::new(None), std::sync::Mutex::new(None));
    for_each(2, |c| {
        if c == 0 {
            let a = tasks.0.lock().unwrap().take().unwrap();
            *results.0.lock().unwrap() = Some(a());
        } else {
            let b = tasks.1.lock().unwrap().take().unwrap();
            *results.1.lock().unwrap() = Some(b());
        }
    });
    (results.0.into_inner().unwrap().unwrap(), results.1.into_inner().unwrap().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_exactly_once() {
        for chunks in [0, 1, 2, 3, 17, 1000] {
            for _ in 0..50 {
                let counts: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                for_each(chunks, |c| {
                    counts[c].fetch_add(1, SeqCst);
                });
                assert!(counts.iter().all(|c| c.load(SeqCst) == 1), "{chunks} chunks");
            }
        }
    }

    #[test]
    fn concurrent_callers_each_get_all_their_chunks() {
        std::thread::scope(|scope| {
            for t in 0..4 {
                scope.spawn(move || {
                    for round in 0..200 {
                        let chunks = 1 + (t * 7 + round) % 23;
                        let sum = AtomicUsize::new(0);
                        for_each(chunks, |c| {
                            sum.fetch_add(c + 1, SeqCst);
                        });
                        assert_eq!(sum.load(SeqCst), chunks * (chunks + 1) / 2);
                    }
                });
            }
        });
    }

    #[test]
    fn join_returns_both_results() {
        for i in 0..200u64 {
            let (a, b) = join(|| (0..=i).sum::<u64>(), || format!("{i}"));
            assert_eq!((a, b), (i * (i + 1) / 2, i.to_string()));
        }
    }

    #[test]
    fn a_panicking_chunk_reaches_the_caller() {
        let result = std::panic::catch_unwind(|| for_each(8, |c| assert!(c != 5, "chunk 5")));
        assert!(result.is_err());
        // The pool is usable afterwards.
        let sum = AtomicUsize::new(0);
        for_each(8, |c| {
            sum.fetch_add(c, SeqCst);
        });
        assert_eq!(sum.load(SeqCst), 28);
    }
}

//! The async runtime keygate serves on, and where its workers run.

/// The multi-threaded runtime keygate serves on: one worker per CPU the process may use.
///
/// With `pin_workers`, and only when the process has whole CPUs to itself (its affinity mask
/// holds exactly as many CPUs as the workers it gets; not, say, a 2-CPU quota on a 64-CPU
/// node), each worker keeps to a CPU of its own. Unpinned, the kernel now and then stacks
/// two busy workers on one CPU while the other runs only a background thread (argon2), and
/// balances them apart only a tick or more later, which shows in the tail latency of API
/// logins while admin logins hash.
pub fn build(pin_workers: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(target_os = "linux")]
    if let Some(cpus) = pin_workers.then(affinity::whole_cpus).flatten() {
        // A thread starts with its creator's mask: a blocking-pool thread spawned from a
        // pinned worker takes the whole set back. (Threads that other crates spawn from a
        // worker, sqlx's SQLite connection threads, keep the worker's CPU: at most eight, and
        // mostly asleep.)
        let all = affinity::set_of(&cpus);
        builder.on_thread_start(move || affinity::restrict(&all));
        builder.on_thread_park(move || affinity::pin_once(&cpus));
    }
    builder.build()
}

#[cfg(target_os = "linux")]
mod affinity {
    use std::{
        cell::Cell,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

    /// The CPUs this process may run on, when it may use all of them: std (and so tokio)
    /// counts a cgroup CPU quota in, the affinity mask does not.
    pub fn whole_cpus() -> Option<Vec<usize>> {
        let cpus = members(&sched_getaffinity(None).ok()?);
        let usable = std::thread::available_parallelism().ok()?.get();
        (cpus.len() > 1 && cpus.len() == usable).then_some(cpus)
    }

    pub fn members(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::MAX_CPU).filter(|&cpu| set.is_set(cpu)).collect()
    }

    pub fn set_of(cpus: &[usize]) -> CpuSet {
        let mut set = CpuSet::new();
        cpus.iter().for_each(|&cpu| set.set(cpu));
        set
    }

    /// Best effort: a refusal (a seccomp profile, say) leaves the thread where it was.
    pub fn restrict(set: &CpuSet) {
        let _ = sched_setaffinity(None, set);
    }

    /// Called as a thread is about to park, which only the runtime's workers do (blocking-pool
    /// threads and `block_on` never call it); each worker pins itself at its first park.
    pub fn pin_once(cpus: &[usize]) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local!(static PINNED: Cell<bool> = const { Cell::new(false) });
        if PINNED.replace(true) {
            return;
        }
        restrict(&set_of(&[cpus[NEXT.fetch_add(1, Ordering::Relaxed) % cpus.len()]]));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use rustix::thread::sched_getaffinity;

    use super::affinity::members as cpus;

    /// Workers each on a CPU of its own, blocking threads free to go anywhere; or, on a
    /// machine whose CPUs the process does not wholly own, nothing pinned at all.
    #[test]
    fn workers_are_pinned_one_per_cpu_and_nothing_else_is() {
        let all = cpus(&sched_getaffinity(None).unwrap());
        let runtime = super::build(true).unwrap();
        let (workers, blocking) = runtime.block_on(async {
            // Every worker parks at least once while nothing is queued.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let mut workers = std::collections::HashMap::new();
            // Which worker runs each task is up to the scheduler: the checks hold for any it used.
            for _ in 0..200 {
                let seen = tokio::spawn(async {
                    tokio::task::yield_now().await;
                    (std::thread::current().id(), cpus(&sched_getaffinity(None).unwrap()))
                });
                let (thread, mask) = seen.await.unwrap();
                workers.insert(thread, mask);
            }
            let blocking = tokio::spawn(async {
                tokio::task::spawn_blocking(|| cpus(&sched_getaffinity(None).unwrap())).await.unwrap()
            });
            (workers, blocking.await.unwrap())
        });
        assert_eq!(blocking, all);
        if super::affinity::whole_cpus().is_some() {
            let mut pinned: Vec<usize> = workers.values().flatten().copied().collect();
            assert!(workers.values().all(|mask| mask.len() == 1), "{workers:?}");
            pinned.sort_unstable();
            pinned.dedup();
            assert_eq!(pinned.len(), workers.len(), "two workers share a CPU: {workers:?}");
        } else {
            assert!(workers.values().all(|mask| *mask == all), "{workers:?}");
        }
        let unpinned = super::build(false).unwrap();
        let mask = unpinned.block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            tokio::spawn(async { cpus(&sched_getaffinity(None).unwrap()) }).await.unwrap()
        });
        assert_eq!(mask, all);
    }
}

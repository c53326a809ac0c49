//! The threads a walk or a diff runs its parallel parts on: a pool of the call's own.
//!
//! rayon's global pool would serve in a process that never forks, but a child forked after a
//! first call (Python's `multiprocessing` forks by default on Linux) finds its threads gone and
//! waits for them for ever. A pool of the call's own also never makes one call wait for the
//! threads of another (one blocked writing to a pipe, say), so each is cancelled by itself.

/// Run `work` on a pool of its own, one thread a core; inside a pool already (a walk inside a
/// diff), on that one. The pool's threads block every signal, so that none is taken from the
/// interpreter that waits for the call. Where no thread can be started, `work` runs on the
/// global pool.
pub fn in_pool<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    if rayon::current_thread_index().is_some() {
        return work();
    }
    match rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("layerdiff-{i}"))
        .start_handler(|_| block_signals())
        .build()
    {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
}

fn block_signals() {
    // SAFETY: an all-set signal set is built in place and given to pthread_sigmask, which only
    // reads it; the thread's own mask is changed, no other state.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_in_a_pool_of_its_own_and_nested_calls_in_the_same() {
        let (outer, inner) = in_pool(|| {
            let here = rayon::current_thread_index();
            (here, in_pool(rayon::current_thread_index))
        });
        assert!(outer.is_some() && inner.is_some());
        assert!(rayon::current_thread_index().is_none());
    }
}

//! SIGINT, SIGTERM and SIGHUP during commands that start scratch clusters (`drill`, `demo`).
//!
//! A signal ends the process without unwinding, so no `Drop` stops the scratch server or
//! removes its directory, which holds a restored copy of the site's database. Here a
//! handler only writes the signal's number into a pipe (all it may safely do); a thread
//! reading that pipe removes the live scratch clusters and the private temporary
//! directories (PGPASSFILEs) and exits as a shell expects
//! (128 + the signal). Handlers, unlike a blocked signal mask, are not inherited by the
//! programs ckan-vault starts.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static WRITE_END: AtomicI32 = AtomicI32::new(-1);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let fd = WRITE_END.load(Ordering::Relaxed);
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; `byte` outlives the call.
    unsafe {
        libc::write(fd, (&raw const byte).cast(), 1);
    }
}

/// Installs the handlers (once per process; later calls do nothing).
pub fn remove_scratch_clusters_on_signal() {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        log::warn!("no signal handling: {}", std::io::Error::last_os_error());
        return;
    }
    if WRITE_END
        .compare_exchange(-1, fds[1], Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // SAFETY: both descriptors were just created here and are not used elsewhere.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        return;
    }
    let read_end = fds[0];
    std::thread::spawn(move || {
        let mut byte = 0u8;
        // SAFETY: reads one byte into `byte` from the pipe this thread owns.
        let n = unsafe { libc::read(read_end, (&raw mut byte).cast(), 1) };
        if n != 1 {
            return;
        }
        log::warn!("interrupted by signal {byte}: stopping and removing the scratch cluster");
        ckan_vault::pg::cluster::remove_live();
        ckan_vault::secret::remove_private_dirs();
        std::process::exit(128 + i32::from(byte));
    });
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `on_signal` only calls write(2); the sigaction struct is fully set up.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Called by `main` before it reports anything: once a signal arrived, what the command
/// ends with (most likely an error caused by the cleanup) is not the story; the thread
/// that cleans up ends the process with the signal's exit code.
pub fn settle() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

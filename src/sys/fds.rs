//! The connection descriptors a backend has handed to the engine and not yet closed, so
//! that whatever way a worker ends (a panic unwinding through its loop, an error from
//! the kernel), no descriptor leaks and every peer sees its connection end.

use std::os::fd::RawFd;

use super::syscall::syscall;

/// A set of open descriptors, indexed by number (descriptors are small integers).
#[derive(Debug, Default)]
pub(crate) struct OpenFds {
    open: Vec<bool>,
    count: usize,
}

impl OpenFds {
    /// Records a descriptor the backend just handed to the engine.
    pub fn insert(&mut self, fd: RawFd) {
        let Ok(i) = usize::try_from(fd) else {
            return;
        };
        if self.open.len() <= i {
            self.open.resize(i + 1, false);
        }
        if !self.open[i] {
            self.open[i] = true;
            self.count += 1;
        }
    }

    /// Forgets a descriptor that is being closed.
    pub fn remove(&mut self, fd: RawFd) {
        if let Some(slot) = usize::try_from(fd).ok().and_then(|i| self.open.get_mut(i))
            && *slot
        {
            *slot = false;
            self.count -= 1;
        }
    }

    /// How many descriptors are open.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Closes every descriptor still open. Only call once no operation on any of them
    /// can still be in flight (or the kernel is gone): a close then sends the peer its
    /// FIN (or a reset, if unread bytes wait).
    pub fn close_all(&mut self) {
        for (fd, open) in self.open.iter_mut().enumerate() {
            if *open {
                *open = false;
                // SAFETY: the descriptor was handed to this worker, is still open (the
                // engine never closed it), and is closed once here.
                if let Err(e) = unsafe { syscall!(close(fd as RawFd)) } {
                    log::warn!("close({fd}) at release: {e}");
                }
            }
        }
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_descriptor_once() {
        let mut fds = OpenFds::default();
        fds.insert(7);
        fds.insert(7);
        fds.insert(3);
        assert_eq!(fds.len(), 2);
        fds.remove(7);
        fds.remove(7);
        assert_eq!(fds.len(), 1);
        fds.remove(3);
        assert_eq!(fds.len(), 0);
        fds.close_all(); // nothing open: closes nothing
    }
}

//! Listening sockets that hold up under pressure: an accept loop that
//! backs off when the process is out of descriptors instead of spinning,
//! and says so at most once a second.

use std::time::Duration;

use crate::escape::LogLimiter;

/// The first pause after a failed `accept`; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);

static ACCEPT_ERRORS: LogLimiter = LogLimiter::new(Duration::from_secs(1));

/// The pause of an accept loop after errors.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    pause: Option<Duration>,
}

impl AcceptBackoff {
    /// An accept succeeded.
    pub fn reset(&mut self) {
        self.pause = None;
    }

    /// An accept on `listener` failed with `error`: wait before the next.
    pub async fn wait(&mut self, listener: &str, error: &std::io::Error) {
        let pause = self.next_pause();
        if ACCEPT_ERRORS.allow() {
            tracing::warn!(
                listener,
                pause_ms = pause.as_millis() as u64,
                "cannot accept a connection: {error} (out of file descriptors?)"
            );
        }
        tokio::time::sleep(pause).await;
    }

    fn next_pause(&mut self) -> Duration {
        let p = self.pause.map_or(FIRST_PAUSE, |p| (p * 2).min(MAX_PAUSE));
        self.pause = Some(p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_to_a_cap_and_resets() {
        let mut b = AcceptBackoff::default();
        assert_eq!(b.next_pause(), FIRST_PAUSE);
        assert_eq!(b.next_pause(), FIRST_PAUSE * 2);
        for _ in 0..20 {
            b.next_pause();
        }
        assert_eq!(b.next_pause(), MAX_PAUSE);
        b.reset();
        assert_eq!(b.next_pause(), FIRST_PAUSE);
    }
}

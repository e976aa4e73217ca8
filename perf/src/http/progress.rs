//! Live figures while a drive runs: indicatif bars on a terminal, a plain
//! line every few seconds otherwise (for CI logs), or nothing.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tenlives_engine::breaker::BreakerState;

use super::record::Tally;

/// How to show progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars on a terminal, else a line every `every`.
    Auto {
        /// Interval of the plain lines.
        every: Duration,
    },
    /// Nothing.
    Quiet,
}

/// One front's live figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Live {
    /// Everything so far.
    pub tally: Tally,
    /// p99 of the answers in the last closed bucket (`None` before the
    /// first bucket closes, or when it had no answers).
    pub recent_p99: Option<Duration>,
    /// In flight now.
    pub in_flight: u64,
    /// The breaker's state (protected front).
    pub breaker: Option<BreakerState>,
    /// The concurrency limit (protected front).
    pub limit: Option<u32>,
}

/// One line of live figures for a front.
pub fn live_line(name: &str, l: &Live) -> String {
    let t = &l.tally;
    let pct = |n: u64| 100.0 * t.share(n);
    let mut s = format!(
        "{name:<11} sent {:>7}  ok {:>5.1} %  failed {:>5.1} %  rejected {:>5.1} %  shed {:>5.1} %  p99 {:>6}  in flight {:>4}",
        t.sent,
        pct(t.succeeded),
        pct(t.failed()),
        pct(t.rejected),
        pct(t.shed()),
        l.recent_p99
            .map_or_else(|| "-".to_string(), super::report::ms),
        l.in_flight,
    );
    if let Some(b) = l.breaker {
        s.push_str(&format!("  breaker {b}"));
    }
    if let Some(limit) = l.limit {
        s.push_str(&format!("  limit {limit}"));
    }
    s
}

/// The display of one drive.
pub struct Progress {
    mode: Inner,
}

enum Inner {
    Bars {
        // Held so the bars stay drawn; dropped at the end.
        _multi: MultiProgress,
        clock: ProgressBar,
        fronts: Vec<ProgressBar>,
    },
    Lines {
        every: Duration,
        next: Duration,
    },
    Quiet,
}

impl Progress {
    /// A display for a drive of `length` over `fronts` fronts.
    pub fn new(mode: ProgressMode, length: Duration, fronts: usize) -> Progress {
        let inner = match mode {
            ProgressMode::Quiet => Inner::Quiet,
            ProgressMode::Auto { every } if !std::io::stdout().is_terminal() => {
                Inner::Lines { every, next: every }
            }
            ProgressMode::Auto { .. } => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
                let clock = multi.add(ProgressBar::new(length.as_secs().max(1)));
                clock.set_style(
                    ProgressStyle::with_template("{bar:40.cyan/blue} {pos:>4}/{len} s  {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                let line = ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
                let fronts = (0..fronts)
                    .map(|_| {
                        let bar = multi.add(ProgressBar::new(1));
                        bar.set_style(line.clone());
                        bar
                    })
                    .collect();
                Inner::Bars {
                    _multi: multi,
                    clock,
                    fronts,
                }
            }
        };
        Progress { mode: inner }
    }

    /// Shows the figures at `elapsed` into the drive, with the upstream's
    /// current phase.
    pub fn update(&mut self, elapsed: Duration, phase: &str, fronts: &[(&str, Live)]) {
        match &mut self.mode {
            Inner::Quiet => {}
            Inner::Bars {
                clock,
                fronts: bars,
                ..
            } => {
                clock.set_position(elapsed.as_secs());
                clock.set_message(format!("upstream: {phase}"));
                for (bar, (name, live)) in bars.iter().zip(fronts) {
                    bar.set_message(live_line(name, live));
                }
            }
            Inner::Lines { every, next } => {
                if elapsed >= *next {
                    *next = elapsed + *every;
                    println!("[{:>5} s] upstream: {phase}", elapsed.as_secs());
                    for (name, live) in fronts {
                        println!("          {}", live_line(name, live));
                    }
                }
            }
        }
    }

    /// Clears the bars.
    pub fn finish(self) {
        if let Inner::Bars { clock, fronts, .. } = self.mode {
            for bar in fronts {
                bar.finish_and_clear();
            }
            clock.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::record::Outcome;

    #[test]
    fn a_live_line_shows_shares_and_state() {
        let mut tally = Tally {
            offered: 4,
            sent: 4,
            ..Tally::default()
        };
        tally.record(Outcome::Succeeded);
        tally.record(Outcome::Succeeded);
        tally.record(Outcome::Rejected);
        let mut live = Live {
            tally,
            recent_p99: None,
            in_flight: 1,
            breaker: Some(BreakerState::Open),
            limit: Some(16),
        };
        let line = live_line("protected", &live);
        assert!(
            line.starts_with("protected   sent       4  ok  50.0 %"),
            "{line}"
        );
        assert!(line.contains("rejected  25.0 %"), "{line}");
        assert!(line.contains("p99      -"), "{line}");
        assert!(line.ends_with("breaker open  limit 16"), "{line}");
        live.recent_p99 = Some(Duration::from_millis(12));
        live.breaker = None;
        live.limit = None;
        let line = live_line("unprotected", &live);
        assert!(line.contains("p99  12 ms  in flight    1"), "{line}");
        assert!(line.ends_with("in flight    1"), "{line}");
    }
}

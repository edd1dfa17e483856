//! The learning-rate schedule: linear warmup from zero to the peak, then cosine decay to the
//! minimum at the last step (PolyLM: 6e-5 → 6e-6 after 2,000 warmup steps).

/// Warmup then cosine decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Peak learning rate, reached at the end of the warmup.
    pub lr: f64,
    /// Learning rate at the last step.
    pub min_lr: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// Total optimiser steps.
    pub total: u64,
}

impl Schedule {
    /// The learning rate of optimiser step `step` (counting from 0).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).saturating_sub(1);
        if span == 0 {
            return self.lr;
        }
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + (self.lr - self.min_lr) * cosine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_linear_and_cosine_ends_at_the_minimum() {
        let s = Schedule { lr: 6e-4, min_lr: 6e-5, warmup: 10, total: 110 };
        assert!((s.lr_at(0) - 6e-5).abs() < 1e-15);
        assert!((s.lr_at(4) - 3e-4).abs() < 1e-15);
        assert!((s.lr_at(9) - 6e-4).abs() < 1e-15);
        assert!((s.lr_at(10) - 6e-4).abs() < 1e-15);
        let mid = s.lr_at(10 + 99 / 2);
        assert!(
            (mid - (6e-5 + 0.5 * (6e-4 - 6e-5) * (1.0 + (std::f64::consts::PI * 49.0 / 99.0).cos()))).abs()
                < 1e-15
        );
        assert!((s.lr_at(109) - 6e-5).abs() < 1e-15);
        assert!((s.lr_at(500) - 6e-5).abs() < 1e-15);
        for step in 10..109 {
            assert!(s.lr_at(step + 1) <= s.lr_at(step), "decays monotonically at {step}");
        }
    }

    #[test]
    fn no_warmup_and_single_step() {
        let s = Schedule { lr: 1e-3, min_lr: 1e-4, warmup: 0, total: 1 };
        assert_eq!(s.lr_at(0), 1e-3);
        let s = Schedule { lr: 1e-3, min_lr: 1e-4, warmup: 0, total: 3 };
        assert_eq!(s.lr_at(0), 1e-3);
        assert!((s.lr_at(2) - 1e-4).abs() < 1e-15);
    }
}

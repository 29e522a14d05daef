//! What the benchmark binaries (boot-bench, fs-bench) share: which monitor a round runs,
//! and the median of a round's samples.

/// The two monitors a benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Our VMM.
    Vmm,
    /// QEMU's microvm machine, the reference.
    Qemu,
}

impl Tool {
    /// The name printed in tables.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Vmm => "bulkhead-vmm",
            Tool::Qemu => "qemu-microvm",
        }
    }
}

/// Median of `v` (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}

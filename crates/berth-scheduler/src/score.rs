//! Scoring of feasible nodes; higher is better.

use crate::Strategy;
use crate::filter::Prepared;
use crate::model::NodeHot;

/// Fraction of `cap` still free once `used` is taken (0 for a zero capacity).
#[inline]
fn free_frac(used: u64, cap: u64) -> f64 {
    if cap == 0 {
        0.0
    } else {
        (1.0 - used as f64 / cap as f64).clamp(0.0, 1.0)
    }
}

#[inline]
pub(crate) fn score(p: &Prepared<'_>, n: &NodeHot) -> f64 {
    let free_cpu = free_frac(n.cpu_used.saturating_add(p.cpu), n.cap_cpu);
    let free_mem = free_frac(n.mem_used.saturating_add(p.mem), n.cap_mem);
    match p.req.strategy {
        // Nomad's ScoreFitBinPack: 20 - (10^freeCpu + 10^freeMem), in [0, 18]; fuller wins,
        // and the exponent favours nodes where both dimensions fill evenly.
        Strategy::BinPack => (20.0 - (pow10(free_cpu) + pow10(free_mem))).clamp(0.0, 18.0) / 18.0,
        // Fewest tasks of this app first (weight 4 > the at most 2 of the free part), then the
        // emptiest node.
        Strategy::Spread => {
            let mine = p
                .app
                .and_then(|a| a.node_counts.get(&n.slot).copied())
                .unwrap_or(0);
            -4.0 * f64::from(mine) + free_cpu + free_mem
        }
    }
}

/// 10^x via exp, which is cheaper than the general `powf`.
#[inline]
fn pow10(x: f64) -> f64 {
    (x * std::f64::consts::LN_10).exp()
}

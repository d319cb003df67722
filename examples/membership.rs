//! Memorization from many models (ALGORITHMS.md §5): a pool of shadow models, each
//! trained on a random half of the data, gives Feldman–Zhang memorization scores and
//! LiRA membership inference.
//!
//!     cargo run --release --example membership

use rote::membership::attack::{self, AttackKind, AttackSpec};
use rote::membership::pool::{self, Pool, PoolConfig};
use rote::membership::Centre;
use rote::nn::train::{Schedule, TrainConfig};

fn main() -> anyhow::Result<()> {
    let recipe = TrainConfig { epochs: 30, batch: 32, lr: 0.1, schedule: Schedule::Constant, label_noise: 0.1, ..TrainConfig::recipe("digits:subset=100", "mlp:64-256-10") };
    let (recipe, ds) = recipe.for_data("auto")?;
    let dir = tempfile::tempdir()?;
    let cfg = PoolConfig { recipe, models: 16, keep: 0.5, mirror: false };
    pool::train_pool(&ds, &cfg, dir.path(), Default::default(), false, &|_, _| {})?;

    let p = Pool::open(dir.path())?;
    let (m, _) = attack::memorization(&p)?;
    let means = m.group_means(&p.corrupted);
    let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    println!("mean memorization: all {}, mislabelled {}, clean {}", show(means.all), show(means.corrupted), show(means.clean));

    let spec = AttackSpec { kind: AttackKind::LiraOnline, centre: Centre::Median, fixed_variance: false, gamma: 2.0, offline_a: None, population: 0 };
    let ev = attack::Evidence::load(&p, spec.kind)?;
    let k = p.models();
    let targets: Vec<usize> = (0..k).collect();
    let result = attack::attack(&p, &ev, &spec, &targets, &attack::first_others(k, k - 1), false)?;
    let metrics = result.roc(None)?.metrics(None)?;
    println!("LiRA over {k} leave-one-out targets: AUC {:.3}", metrics.auc);
    Ok(())
}

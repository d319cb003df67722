//! CPU throughput of the frame's primitives: Philox fills and row norms.
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rote::device::Backend;
use rote::rng::Philox;

fn philox(c: &mut Criterion) {
    let mut g = c.benchmark_group("philox");
    let n = 1 << 20;
    g.throughput(Throughput::Elements(n as u64));
    let mut out = vec![0f32; n];
    let rng = Philox::new(1, 2);
    g.bench_function("uniform", |b| b.iter(|| rng.fill_uniform(0, &mut out)));
    g.bench_function("normal", |b| b.iter(|| rng.fill_normal(0, &mut out)));
    g.bench_function("sign", |b| b.iter(|| rng.fill_sign(0, &mut out)));
    g.finish();
}

fn norms(c: &mut Criterion) {
    let ds = rote::data::open("blobs:n=20000,dim=784,seed=1").unwrap();
    let mut g = c.benchmark_group("row_norms");
    g.throughput(Throughput::Elements(20000));
    g.bench_function("f32 20000x784", |b| b.iter(|| Backend::Cpu.row_sq_norms(&ds.train.x, 0..20000, &|_| {}).unwrap()));
    g.finish();
}

criterion_group!(benches, philox, norms);
criterion_main!(benches);

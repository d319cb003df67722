//! Fuzz-style tests of the readers of untrusted files, for a bounded time each: .npy
//! arrays (alone and as dataset directories) and safetensors networks. Inputs are valid
//! files with random truncations, random header fields and random values (extremes,
//! NaN, denormals); every one must load with the announced shape and the written
//! values, or fail with an error — never panic, never read out of bounds.

mod common;

use common::*;
use rote::rng::Philox;
use std::time::{Duration, Instant};

/// How long each fuzz loop runs (ROTE_FUZZ_SECONDS to change).
fn budget() -> Duration {
    let s = std::env::var("ROTE_FUZZ_SECONDS").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

struct Draw {
    rng: Philox,
    i: u64,
}

impl Draw {
    fn word(&mut self) -> u32 {
        self.i += 1;
        self.rng.word(self.i)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.word() as usize) % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn value(&mut self) -> f32 {
        let extremes = [0.0, -0.0, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-45, -1e-45, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e38, -3e38, 1.0, -1.0];
        if self.below(4) == 0 { *self.pick(&extremes) } else { f32::from_bits(self.word()) }
    }
}

const DESCRS: [&str; 14] = ["<f4", "<f8", "<f2", "|u1", "<i8", "<i4", ">f4", ">i8", "|b1", "<c8", "<U3", "|O", "<f16", "f4"];
const SHAPES: [&str; 12] = ["(3, 4)", "(12,)", "(0, 4)", "(3, 0)", "()", "(2, 2, 3)", "(4, 3)", "(18446744073709551615, 2)", "(-1, 4)", "(3, 4", "[3, 4]", "(1000000000, 1000000000)"];

/// A .npy file: a random header (descr, order, shape, version, padding) over random data.
fn random_npy(d: &mut Draw) -> Vec<u8> {
    let descr = *d.pick(&DESCRS);
    let shape = *d.pick(&SHAPES);
    let fortran = d.below(8) == 0;
    let elements = 12usize;
    let size = match descr {
        "<f8" | "<i8" | ">i8" | "<c8" => 8,
        "<f2" => 2,
        "|u1" | "|b1" => 1,
        _ => 4,
    };
    let mut data = vec![0u8; elements * size];
    for c in data.chunks_mut(4) {
        let v = d.value().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
    let mut bytes = raw_npy(descr, fortran, shape, &data);
    match d.below(6) {
        0 => bytes[6] = *d.pick(&[1u8, 2, 3, 0, 255]), // version
        1 => {
            let at = 8 + d.below(2);
            bytes[at] = d.word() as u8; // header length
        }
        2 => {
            let at = 10 + d.below(bytes.len().saturating_sub(10).max(1));
            if at < bytes.len() {
                bytes[at] = d.word() as u8;
            }
        }
        _ => {}
    }
    if d.below(3) == 0 {
        let keep = d.below(bytes.len() + 1);
        bytes.truncate(keep);
    }
    bytes
}

#[test]
fn npy_reader_never_panics_and_reads_what_it_announces() {
    let dir = tempdir();
    let path = dir.path().join("a.npy");
    let mut d = Draw { rng: Philox::new(15, 1), i: 0 };
    let t0 = Instant::now();
    let (mut tried, mut loaded) = (0, 0);
    while t0.elapsed() < budget() {
        let bytes = random_npy(&mut d);
        std::fs::write(&path, &bytes).unwrap();
        tried += 1;
        let result = std::panic::catch_unwind(|| rote::data::Array::open_npy(&path).map(|a| (a.shape.clone(), a.dtype, a.bytes().len(), a.first_non_finite().is_some())));
        let outcome = result.unwrap_or_else(|_| panic!("open_npy panicked on {:?}", bytes));
        if let Ok((shape, dtype, len, _)) = outcome {
            loaded += 1;
            assert_eq!(len, shape.iter().product::<usize>() * dtype.size(), "{bytes:?}");
            assert!(len <= bytes.len());
        }
    }
    eprintln!("npy: {tried} files, {loaded} loaded");
    assert!(tried > 100 && loaded > 0);
}

#[test]
fn dataset_directories_of_random_arrays_load_or_are_refused() {
    let dir = tempdir();
    let data = dir.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    let mut d = Draw { rng: Philox::new(15, 2), i: 0 };
    let t0 = Instant::now();
    let (mut tried, mut loaded) = (0, 0);
    while t0.elapsed() < budget() {
        std::fs::write(data.join("x.npy"), random_npy(&mut d)).unwrap();
        let labels: Vec<i64> = (0..*d.pick(&[0usize, 1, 3, 4, 12])).map(|_| *d.pick(&[0i64, 1, 2, -1, i64::MAX, i64::MIN])).collect();
        let mut y = raw_npy(*d.pick(&["<i8", "<f4", "|u1"]), false, &format!("({},)", labels.len()), &i64_bytes(&labels));
        if d.below(4) == 0 {
            let keep = d.below(y.len());
            y.truncate(keep);
        }
        std::fs::write(data.join("y.npy"), y).unwrap();
        tried += 1;
        let result = std::panic::catch_unwind(|| rote::data::Dataset::open_dir(&data).map(|ds| ds.info().n));
        match result {
            Err(_) => panic!("open_dir panicked"),
            Ok(Ok(n)) => {
                loaded += 1;
                let ds = rote::data::Dataset::open_dir(&data).unwrap();
                assert_eq!(n, ds.train.x.rows());
                assert!(ds.train.features() > 0 && ds.train.y.iter().all(|&c| c >= 0));
                assert!(ds.train.x.first_non_finite().is_none());
            }
            Ok(Err(e)) => assert!(!format!("{e:#}").is_empty()),
        }
    }
    eprintln!("datasets: {tried} directories, {loaded} loaded");
    assert!(tried > 100);
}

/// A checkpoint of mlp:3-4-2 by the safetensors specification, with random changes.
fn random_checkpoint(d: &mut Draw) -> (Vec<u8>, bool) {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
        ("0.weight".into(), vec![4, 3], (0..12).map(|k| k as f32 * 0.1).collect()),
        ("0.bias".into(), vec![4], vec![0.5; 4]),
        ("2.weight".into(), vec![2, 4], (0..8).map(|k| k as f32 * -0.2).collect()),
        ("2.bias".into(), vec![2], vec![0.0; 2]),
    ];
    let mut intact = true;
    match d.below(7) {
        0 => {
            let t = d.below(tensors.len());
            let k = d.below(tensors[t].2.len());
            tensors[t].2[k] = d.value();
            intact = tensors[t].2[k].is_finite();
        }
        1 => {
            tensors.push(("4.weight".into(), vec![1], vec![1.0]));
            intact = false;
        }
        2 => {
            tensors.remove(d.below(4));
            intact = false;
        }
        3 => {
            let t = d.below(tensors.len());
            tensors[t].1 = vec![tensors[t].2.len(), 1];
            intact = false;
        }
        _ => {}
    }
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.clone())).collect();
    let mut bytes = raw_safetensors(&refs);
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    match d.below(5) {
        0 => {
            let keep = d.below(bytes.len());
            bytes.truncate(keep);
            intact = false;
        }
        1 => {
            let at = d.below(bytes.len());
            let old = bytes[at];
            bytes[at] = d.word() as u8;
            // Inside the data a changed byte is just another float.
            if at < 8 + header_len && bytes[at] != old {
                intact = false;
            } else if at >= 8 + header_len {
                let k = (at - 8 - header_len) / 4;
                let v = f32::from_le_bytes(bytes[8 + header_len + 4 * k..8 + header_len + 4 * k + 4].try_into().unwrap());
                intact &= v.is_finite();
            }
        }
        _ => {}
    }
    (bytes, intact)
}

#[test]
fn checkpoint_reader_never_panics_and_refuses_what_is_not_the_model() {
    use rote::nn::{checkpoint, mlp::Activation};
    let dir = tempdir();
    let path = dir.path().join("c.safetensors");
    let mut d = Draw { rng: Philox::new(15, 3), i: 0 };
    let t0 = Instant::now();
    let (mut tried, mut loaded) = (0, 0);
    while t0.elapsed() < budget() {
        let (bytes, intact) = random_checkpoint(&mut d);
        std::fs::write(&path, &bytes).unwrap();
        tried += 1;
        let result = std::panic::catch_unwind(|| checkpoint::load(&path, &[3, 4, 2], Activation::Relu).map(|m| m.weights.iter().chain(&m.biases).flatten().all(|v| v.is_finite())));
        match result {
            Err(_) => panic!("checkpoint::load panicked on {bytes:?}"),
            Ok(Ok(finite)) => {
                loaded += 1;
                assert!(finite);
            }
            Ok(Err(e)) => {
                // Header edits can still describe the same tensors (a changed digit of
                // an offset is refused, whitespace is not); intact files always load.
                assert!(!intact, "an intact checkpoint was refused: {e:#}");
            }
        }
    }
    eprintln!("checkpoints: {tried} files, {loaded} loaded");
    assert!(tried > 100 && loaded > 0);
}

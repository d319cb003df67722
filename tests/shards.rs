//! The scheduler end to end: chunked norms equal a float64 reference, and shard
//! outputs merged with `rote merge` equal one whole run.

mod common;
use common::*;
use rote::data::{self, Array};
use rote::device::Backend;

fn reference_norms(x: &Array) -> Vec<f64> {
    let v = x.to_f32();
    v.chunks(x.row_len()).map(|r| r.iter().map(|&t| (t as f64) * (t as f64)).sum::<f64>()).collect()
}

#[test]
fn cpu_norms_match_float64_for_every_dtype() {
    let ds = data::open("blobs:n=3000,dim=300,centers=4,seed=9").unwrap();
    let f32x = ds.train.x.clone();
    let f16: Vec<half::f16> = f32x.to_f32().iter().map(|&v| half::f16::from_f32(v)).collect();
    let f16x = Array::from_bytes(data::DType::F16, f32x.shape.clone(), bytemuck::cast_slice(&f16), "f16");
    let u8x = Array::from_u8(vec![3000, 300], &(0..900_000).map(|i| (i * 7 % 256) as u8).collect::<Vec<_>>(), "u8");
    for x in [&f32x, &f16x, &u8x] {
        let want = reference_norms(x);
        let got = Backend::Cpu.row_sq_norms(x, 0..x.rows(), &|_| {}).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(((*g as f64) - w).abs() <= 1e-5 * w.max(1.0), "{:?}: {g} vs {w}", x.dtype);
        }
    }
}

#[test]
fn sharded_norms_merge_to_the_single_run() {
    let dir = tempdir();
    let whole = dir.path().join("whole.npy");
    rote_ok(&["data", "norms", "digits", "--device", "cpu", "--out", p(&whole)]);
    let mut parts = vec![];
    for i in [2, 0, 1] {
        let part = dir.path().join(format!("part{i}.npy"));
        rote_ok(&["data", "norms", "digits", "--device", "cpu", "--shard", &format!("{i}/3"), "--out", p(&part)]);
        parts.push(part);
    }
    let merged = dir.path().join("merged.npy");
    let mut args = vec!["merge", "--out", p(&merged)];
    args.extend(parts.iter().map(|x| p(x)));
    rote_ok(&args);
    assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&merged).unwrap());
    // A missing shard is an error, not a short result.
    let err = rote_err(&["merge", "--out", p(&dir.path().join("m2.npy")), p(&parts[0]), p(&parts[1])]);
    assert!(err.contains("missing") || err.contains("only 2 of 3"), "{err}");
    // Norms of digits from the file equal the float64 reference.
    let arr = Array::open_npy(&whole).unwrap().to_f32();
    let want = reference_norms(&data::open("digits").unwrap().train.x);
    for (g, w) in arr.iter().zip(&want) {
        assert!((*g as f64 - w.sqrt()).abs() < 1e-4);
    }
}

#[test]
fn rng_command_prints_the_library_stream() {
    let out = rote_ok(&["rng", "--seed", "42", "--stream", "3", "--start", "1000", "--count", "5", "--dist", "normal", "--device", "cpu", "--json"]);
    let v = json(&out);
    let rng = rote::rng::Philox::new(42, 3);
    for (i, got) in v["values"].as_array().unwrap().iter().enumerate() {
        assert_eq!(got.as_f64().unwrap() as f32, rng.normal(1000 + i as u64));
    }
    assert_eq!(v["device"], "cpu");
}

#[test]
fn device_listing_never_fails_without_a_gpu() {
    let v = json(&rote_ok(&["device", "--json"]));
    assert_eq!(v["auto"], "cpu");
    assert!(v["cuda"]["unavailable"].is_string());
    // Asking for CUDA explicitly says why it cannot be had.
    let err = rote_err(&["rng", "--device", "cuda"]);
    assert!(err.contains("no usable CUDA device"), "{err}");
}

#[test]
fn shard_auto_reads_the_slurm_job_array() {
    let dir = tempdir();
    let run = |envs: &[(&str, &str)], shard: &str, out: &std::path::Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_rote"))
            .args(["data", "norms", "digits", "--device", "cpu", "--shard", shard, "--out", p(out)])
            .env("ROTE_DISABLE_CUDA", "1")
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("SLURM_ARRAY_TASK_STEP")
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    // --array=1-3: tasks 1, 2, 3 are shards 0/3, 1/3, 2/3.
    let mut parts = vec![];
    for id in ["1", "2", "3"] {
        let auto = dir.path().join(format!("auto{id}.npy"));
        let (ok, err) = run(&[("SLURM_ARRAY_TASK_ID", id), ("SLURM_ARRAY_TASK_COUNT", "3"), ("SLURM_ARRAY_TASK_MIN", "1")], "auto", &auto);
        assert!(ok, "{err}");
        let explicit = dir.path().join(format!("explicit{id}.npy"));
        let index = id.parse::<usize>().unwrap() - 1;
        assert!(run(&[], &format!("{index}/3"), &explicit).0);
        assert_eq!(std::fs::read(&auto).unwrap(), std::fs::read(&explicit).unwrap());
        parts.push(auto);
    }
    let merged = dir.path().join("merged.npy");
    let mut args = vec!["merge", "--out", p(&merged)];
    args.extend(parts.iter().map(|x| p(x)));
    rote_ok(&args);
    let whole = dir.path().join("whole.npy");
    rote_ok(&["data", "norms", "digits", "--device", "cpu", "--out", p(&whole)]);
    assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&merged).unwrap());
    // A stepped array (--array=0-4:2 has tasks 0, 2, 4): task 2 is shard 1/3.
    let stepped = dir.path().join("stepped.npy");
    let (ok, err) = run(&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "3"), ("SLURM_ARRAY_TASK_MIN", "0"), ("SLURM_ARRAY_TASK_STEP", "2")], "auto", &stepped);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&stepped).unwrap(), std::fs::read(dir.path().join("explicit2.npy")).unwrap());
    // Outside a job array: a clear error.
    let (ok, err) = run(&[], "auto", &dir.path().join("x.npy"));
    assert!(!ok && err.contains("SLURM_ARRAY_TASK_ID is not set"), "{err}");
}

#[test]
fn sharded_curvature_merges_to_the_single_run_bit_for_bit() {
    // A sample's score must not depend on which samples share its batch or group:
    // shards of 599/599/599 rows and a batch of 100 split the groups differently.
    let dir = tempdir();
    for (model, estimator) in [("mlp:64-32-10,act=gelu", "hutchinson"), ("mlp:64-32-10,act=gelu", "fd"), ("mlp:64-32-10,act=relu", "exact")] {
        let run = dir.path().join(format!("run-{estimator}"));
        rote_ok(&["train", "--data", "digits", "--model", model, "--epochs", "1", "--batch", "64", "--out", p(&run)]);
        let whole = dir.path().join(format!("whole-{estimator}"));
        rote_ok(&["curvature", "--run", p(&run), "--estimator", estimator, "--device", "cpu", "--out", p(&whole)]);
        let mut parts = vec![];
        for i in 0..3 {
            let part = dir.path().join(format!("part-{estimator}-{i}"));
            rote_ok(&["curvature", "--run", p(&run), "--estimator", estimator, "--device", "cpu", "--batch", "100", "--shard", &format!("{i}/3"), "--out", p(&part)]);
            parts.push(part.join("score.npy"));
        }
        let merged = dir.path().join(format!("merged-{estimator}.npy"));
        let mut args = vec!["merge", "--out", p(&merged)];
        args.extend(parts.iter().map(|x| p(x)));
        rote_ok(&args);
        assert!(std::fs::read(whole.join("score.npy")).unwrap() == std::fs::read(&merged).unwrap(), "{estimator}: the merged shards differ from the single run");
    }
}

/// `--device cuda:all` splits a job's rows over the devices with `sched::split_over`;
/// here CPU backends stand in for the GPUs (the split, the threads and the merge are
/// the same code), and every multi-device result equals the one-device run exactly.
#[test]
fn work_split_over_several_devices_equals_one_device() {
    use rote::curvature::run::{CurvatureJob, Selection, Source};
    use rote::curvature::{Estimator, ScoreConfig, Statistic};
    let dir = tempdir();
    let run = dir.path().join("run");
    rote_ok(&["train", "--data", "digits", "--model", "mlp:64-32-10,act=gelu", "--epochs", "2", "--batch", "64", "--label-noise", "0.1", "--device", "cpu", "--out", p(&run)]);
    let cfg = ScoreConfig { estimator: Estimator::Hutchinson, statistic: Statistic::Paper, probes: 3, h: 1e-3, seed: 5 };
    let selection = Selection { pattern: None, every: 1, allow_incomplete: false };
    let mut job = CurvatureJob::open(&Source::Run(run), None, &selection, &cfg, &|_| {}).unwrap();
    let shard: rote::sched::Shard = "1/2".parse().unwrap();
    let one = job.score(&Backend::Cpu, shard, 100, &cfg, Some(&dir.path().join("one")), &|_| {}).unwrap();
    let done = std::sync::atomic::AtomicU64::new(0);
    let three = job.score_on(&[Backend::Cpu, Backend::Cpu, Backend::Cpu], shard, 100, &cfg, Some(&dir.path().join("three")), &|k| {
        done.fetch_add(k, std::sync::atomic::Ordering::Relaxed);
    });
    let three = three.unwrap();
    assert_eq!(three.rows, one.rows);
    assert_eq!(three.score, one.score);
    assert_eq!(three.trace, one.trace);
    assert_eq!(three.auroc, one.auroc);
    assert_eq!(three.device, "cpu+cpu+cpu");
    assert_eq!(done.into_inner() as usize, 2 * one.rows.len(), "progress over both checkpoints");
    for f in ["score.npy", "trace.npy", "score-epoch-001.npy", "score-epoch-002.npy"] {
        assert_eq!(std::fs::read(dir.path().join("three").join(f)).unwrap(), std::fs::read(dir.path().join("one").join(f)).unwrap(), "{f}");
    }

    use rote::diffusion::{sampler::Schedule, RangeRule, SampleSource};
    let source = SampleSource::Optimal { data: "digits", subset: Some(30), range: RangeRule::Auto };
    let schedule = Schedule { steps: 4, ..Default::default() };
    let whole = rote::diffusion::sample(&source, 7, Default::default(), &schedule, 2, &[Backend::Cpu], &mut |_| {}).unwrap();
    let mut steps = vec![];
    let split = rote::diffusion::sample(&source, 7, Default::default(), &schedule, 2, &[Backend::Cpu, Backend::Cpu, Backend::Cpu], &mut |k| steps.push(k)).unwrap();
    assert_eq!(split.x, whole.x);
    assert_eq!(steps, vec![0, 1, 2, 3]);
    // More devices than samples: the idle ones contribute nothing.
    let few = rote::diffusion::sample(&source, 2, Default::default(), &schedule, 2, &[Backend::Cpu, Backend::Cpu, Backend::Cpu], &mut |_| {}).unwrap();
    assert_eq!(few.x, whole.x[..2 * 64]);

    let ds = data::open("blobs:n=2000,dim=24,centers=5,seed=1").unwrap();
    let queries = data::open("blobs:n=77,dim=24,centers=5,seed=2").unwrap().train.x.to_f32();
    let train = rote::diffusion::TrainingSet::new(&ds.train.x, rote::diffusion::PixelRange::MODEL).unwrap();
    let metric = rote::diffusion::knn::Metric::L2;
    let want = rote::diffusion::knn_on(&Backend::Cpu, &train, &queries, 3, metric).unwrap();
    assert_eq!(rote::diffusion::knn_on_all(&[Backend::Cpu, Backend::Cpu, Backend::Cpu, Backend::Cpu], &train, &queries, 3, metric).unwrap(), want);
}

#[test]
fn cuda_all_is_a_device_choice_and_says_why_when_there_is_no_gpu() {
    use rote::device::DeviceRequest;
    assert_eq!("cuda:all".parse::<DeviceRequest>(), Ok(DeviceRequest::AllCuda));
    assert!("cuda:any".parse::<DeviceRequest>().unwrap_err().contains("cuda:all"));
    if rote::device::cuda::probe().devices.is_empty() {
        let dir = tempdir();
        let e = rote_err(&["denoise", "sample", "--data", "digits", "--samples", "1", "--steps", "2", "--out", p(&dir.path().join("s")), "--device", "cuda:all"]);
        assert!(e.contains("--device cuda:all: no usable CUDA device"), "{e}");
        assert!(!dir.path().join("s").exists(), "nothing written");
        let e = rote::device::Backend::open_all(DeviceRequest::AllCuda).err().expect("no GPU here").to_string();
        assert!(e.contains("cuda:all: no usable CUDA device") || e.contains("no CUDA device"), "{e}");
    }
}

//! Datasets end to end through the CLI: built-ins, generators, importers, transforms,
//! and the errors bad input must produce.

mod common;
use common::*;
use std::io::Write;

#[test]
fn digits_is_built_in_with_1797_samples_of_10_classes() {
    let v = json(&rote_ok(&["data", "info", "digits", "--json"]));
    assert_eq!(v["n"], 1797);
    assert_eq!(v["classes"], 10);
    assert_eq!(v["sample_shape"], serde_json::json!([8, 8]));
    let counts: u64 = v["class_counts"].as_object().unwrap().values().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(counts, 1797);
}

#[test]
fn fashion_mnist_reads_the_debian_package() {
    if !std::path::Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists() {
        assert!(
            std::env::var("ROTE_REQUIRE_FASHION_MNIST").is_err(),
            "dataset-fashion-mnist is not installed but ROTE_REQUIRE_FASHION_MNIST is set"
        );
        eprintln!("SKIPPED fashion_mnist_reads_the_debian_package: apt-get install dataset-fashion-mnist to run it");
        return;
    }
    let cache = tempdir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rote"))
        .args(["data", "info", "fashion-mnist", "--json"])
        .env("ROTE_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(v["n"], 60000);
    assert_eq!(v["n_test"], 10000);
    assert_eq!(v["sample_shape"], serde_json::json!([28, 28]));
    for (_, c) in v["class_counts"].as_object().unwrap() {
        assert_eq!(c, 6000);
    }
    // The second open uses the memory-mapped cache.
    assert!(cache.path().join("fashion-mnist/x.npy").is_file());
    assert_eq!(v["memory_mapped"], true);
}

#[test]
fn moons_generator_is_deterministic() {
    let dir = tempdir();
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    rote_ok(&["data", "gen", "moons:n=300,noise=0.05,seed=4", "--out", p(&a)]);
    rote_ok(&["data", "gen", "moons:n=300,noise=0.05,seed=4", "--out", p(&b)]);
    rote_ok(&["data", "gen", "moons:n=300,noise=0.05,seed=5", "--out", p(&c)]);
    let read = |d: &std::path::Path| std::fs::read(d.join("x.npy")).unwrap();
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
    let v = json(&rote_ok(&["data", "info", p(&a), "--json"]));
    assert_eq!(v["n"], 300);
    assert_eq!(v["class_counts"]["0"], 150);
}

#[test]
fn hand_written_npy_is_read_and_memory_mapped() {
    let dir = tempdir();
    let ds = write_dataset(&dir.path().join("ds"), 12, 5);
    let v = json(&rote_ok(&["data", "info", p(&ds), "--json"]));
    assert_eq!(v["n"], 12);
    assert_eq!(v["features"], 5);
    assert_eq!(v["dtype"], "f32");
    assert_eq!(v["memory_mapped"], true);
    assert_eq!(v["class_counts"]["2"], 4);
}

/// IDX files written here from the format description, then imported.
fn idx_bytes(type_code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, type_code, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_import_round_trips() {
    let dir = tempdir();
    let n = 7;
    let pixels: Vec<u8> = (0..n * 4 * 3).map(|i| (i * 11 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
    std::fs::write(dir.path().join("img.gz"), gz(&idx_bytes(0x08, &[n as u32, 4, 3], &pixels))).unwrap();
    std::fs::write(dir.path().join("lab"), idx_bytes(0x08, &[n as u32], &labels)).unwrap();
    let out = dir.path().join("imported");
    rote_ok(&["data", "import", "idx", "--images", p(&dir.path().join("img.gz")), "--labels", p(&dir.path().join("lab")), "--out", p(&out)]);
    let x = std::fs::read(out.join("x.npy")).unwrap();
    assert!(x.ends_with(&pixels), "pixels must be stored unchanged");
    let v = json(&rote_ok(&["data", "info", p(&out), "--json"]));
    assert_eq!(v["n"], n);
    assert_eq!(v["sample_shape"], serde_json::json!([4, 3]));
    assert_eq!(v["dtype"], "u8");
    assert_eq!(v["class_counts"]["0"], 2);
    // int32 IDX data is big-endian in the file and must come out little-endian.
    let vals: Vec<i32> = vec![1, -2, 300000, 4];
    let be: Vec<u8> = vals.iter().flat_map(|v| v.to_be_bytes()).collect();
    std::fs::write(dir.path().join("lab32"), idx_bytes(0x0C, &[4], &be)).unwrap();
    let img4: Vec<u8> = (0..4 * 2).map(|i| i as u8).collect();
    std::fs::write(dir.path().join("img4"), idx_bytes(0x08, &[4, 2], &img4)).unwrap();
    let err = rote_err(&["data", "import", "idx", "--images", p(&dir.path().join("img4")), "--labels", p(&dir.path().join("lab32")), "--out", p(&dir.path().join("neg"))]);
    assert!(err.contains("non-negative"), "{err}");
}

#[test]
fn truncated_idx_is_rejected() {
    let dir = tempdir();
    let mut bytes = idx_bytes(0x08, &[10, 2, 2], &[0u8; 40]);
    bytes.truncate(bytes.len() - 3);
    std::fs::write(dir.path().join("img"), &bytes).unwrap();
    std::fs::write(dir.path().join("lab"), idx_bytes(0x08, &[10], &[0u8; 10])).unwrap();
    let err = rote_err(&["data", "import", "idx", "--images", p(&dir.path().join("img")), "--labels", p(&dir.path().join("lab")), "--out", p(&dir.path().join("o"))]);
    assert!(err.contains("37 data bytes"), "{err}");
}

#[test]
fn cifar_import_round_trips_both_layouts() {
    let dir = tempdir();
    // Two CIFAR-10 records: label, then R, G, B planes.
    let mut batch = Vec::new();
    for (label, base) in [(3u8, 10u8), (7, 20)] {
        batch.push(label);
        for plane in 0..3u8 {
            batch.extend((0..1024).map(|i| base + plane + (i % 5) as u8));
        }
    }
    std::fs::write(dir.path().join("data_batch_1.bin"), &batch).unwrap();
    let out = dir.path().join("c10");
    rote_ok(&["data", "import", "cifar", "--train", p(&dir.path().join("data_batch_1.bin")), "--out", p(&out)]);
    let v = json(&rote_ok(&["data", "info", p(&out), "--json"]));
    assert_eq!(v["n"], 2);
    assert_eq!(v["sample_shape"], serde_json::json!([32, 32, 3]));
    assert_eq!(v["class_counts"]["7"], 1);
    // Channels last: pixel 0 of sample 1 is (R, G, B) = (20, 21, 22).
    let x = std::fs::read(out.join("x.npy")).unwrap();
    let data = &x[x.len() - 2 * 3072..];
    assert_eq!(&data[3072..3075], &[20, 21, 22]);
    // CIFAR-100: coarse then fine label.
    let mut b100 = vec![4u8, 42];
    b100.extend(std::iter::repeat(9u8).take(3072));
    std::fs::write(dir.path().join("train.bin"), &b100).unwrap();
    let fine = dir.path().join("fine");
    rote_ok(&["data", "import", "cifar", "--train", p(&dir.path().join("train.bin")), "--out", p(&fine)]);
    assert_eq!(json(&rote_ok(&["data", "info", p(&fine), "--json"]))["class_counts"]["42"], 1);
    let coarse = dir.path().join("coarse");
    rote_ok(&["data", "import", "cifar", "--train", p(&dir.path().join("train.bin")), "--label", "coarse", "--out", p(&coarse)]);
    assert_eq!(json(&rote_ok(&["data", "info", p(&coarse), "--json"]))["class_counts"]["4"], 1);
}

#[test]
fn csv_import_with_header_and_shape() {
    let dir = tempdir();
    let csv = "a,b,c,d,label\n0,1,2,3,1\n4,5,6,7,0\n8,9,10,11,1\n";
    std::fs::write(dir.path().join("d.csv"), csv).unwrap();
    let out = dir.path().join("o");
    rote_ok(&["data", "import", "csv", p(&dir.path().join("d.csv")), "--shape", "2x2", "--out", p(&out)]);
    let v = json(&rote_ok(&["data", "info", p(&out), "--json"]));
    assert_eq!(v["n"], 3);
    assert_eq!(v["sample_shape"], serde_json::json!([2, 2]));
    assert_eq!(v["dtype"], "u8");
    std::fs::write(dir.path().join("bad.csv"), "1,2,0\n1,x,1\n").unwrap();
    let err = rote_err(&["data", "import", "csv", p(&dir.path().join("bad.csv")), "--out", p(&dir.path().join("b"))]);
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn transforms_subset_scale_downsample() {
    let v = json(&rote_ok(&["data", "info", "digits:subset=20", "--json"]));
    assert_eq!(v["n"], 200);
    assert_eq!(v["class_counts"]["9"], 20);
    let v = json(&rote_ok(&["data", "info", "digits:downsample=2", "--json"]));
    assert_eq!(v["sample_shape"], serde_json::json!([4, 4]));
    let v = json(&rote_ok(&["data", "info", "digits:subset-random=100,subset-seed=3", "--json"]));
    assert_eq!(v["n"], 100);
    // scale=maxnorm: the largest norm becomes 1.
    let dir = tempdir();
    let out = dir.path().join("n.npy");
    let v = json(&rote_ok(&["data", "norms", "moons:n=500,seed=2,scale=maxnorm", "--device", "cpu", "--out", p(&out), "--json"]));
    assert!((v["max_norm"].as_f64().unwrap() - 1.0).abs() < 1e-6, "{v}");
    // scale=pm1 maps uint8 pixels p to p/127.5 − 1: digits' pixels are 0..16.
    let v = json(&rote_ok(&["data", "norms", "digits:scale=pm1", "--device", "cpu", "--out", p(&out), "--json"]));
    assert!(v["max_norm"].as_f64().unwrap() > 7.0);
}

#[test]
fn bad_input_is_rejected_with_the_file_and_the_problem() {
    let dir = tempdir();
    let base = write_dataset(&dir.path().join("ok"), 6, 2);
    let x_ok = std::fs::read(base.join("x.npy")).unwrap();
    let y_ok = std::fs::read(base.join("y.npy")).unwrap();
    let case = |name: &str, x: Vec<u8>, y: Vec<u8>| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("x.npy"), &x).unwrap();
        std::fs::write(d.join("y.npy"), &y).unwrap();
        let err = rote_err(&["data", "info", p(&d)]);
        // Nothing the user gave is modified.
        assert_eq!(std::fs::read(d.join("x.npy")).unwrap(), x);
        assert_eq!(std::fs::read(d.join("y.npy")).unwrap(), y);
        err
    };
    let err = case("truncated", x_ok[..x_ok.len() - 4].to_vec(), y_ok.clone());
    assert!(err.contains("truncated") && err.contains("x.npy"), "{err}");
    let fortran = raw_npy("<f4", true, "(6, 2)", &f32_bytes(&[0.0; 12]));
    let err = case("fortran", fortran, y_ok.clone());
    assert!(err.contains("Fortran"), "{err}");
    let y5 = raw_npy("<i8", false, "(5,)", &i64_bytes(&[0; 5]));
    let err = case("mismatch", x_ok.clone(), y5);
    assert!(err.contains("6 samples") && err.contains("5 labels"), "{err}");
    let yf = raw_npy("<f4", false, "(6,)", &f32_bytes(&[0.0; 6]));
    let err = case("float-labels", x_ok.clone(), yf);
    assert!(err.contains("must be integers"), "{err}");
    let mut xs = vec![0.5f32; 12];
    xs[7] = f32::NAN;
    let err = case("nan", raw_npy("<f4", false, "(6, 2)", &f32_bytes(&xs)), y_ok.clone());
    assert!(err.contains("sample 3") && err.contains("non-finite"), "{err}");
    let err = case("empty", raw_npy("<f4", false, "(0, 2)", &[]), raw_npy("<i8", false, "(0,)", &[]));
    assert!(err.contains("empty"), "{err}");
    let err = case("garbage", b"not an npy file at all".to_vec(), y_ok.clone());
    assert!(err.contains("NUMPY"), "{err}");
    let err = rote_err(&["data", "info", "cifar-10"]);
    assert!(err.contains("built-in (digits, fashion-mnist)"), "{err}");
    let err = rote_err(&["data", "info", "moons:n=abc"]);
    assert!(err.contains("n=abc"), "{err}");
}

#[test]
fn writing_never_overwrites_a_dataset() {
    let dir = tempdir();
    let d = write_dataset(&dir.path().join("mine"), 4, 2);
    let before = std::fs::read(d.join("x.npy")).unwrap();
    let err = rote_err(&["data", "gen", "moons:n=10", "--out", p(&d)]);
    assert!(err.contains("already holds a dataset"), "{err}");
    assert_eq!(std::fs::read(d.join("x.npy")).unwrap(), before);
}

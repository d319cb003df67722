#![allow(dead_code)]
//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn rote(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rote")).args(args).env("ROTE_DISABLE_CUDA", "1").output().expect("run rote")
}

/// Runs rote with extra environment variables (e.g. `ROTE_FAILPOINT`).
pub fn rote_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rote"));
    c.args(args).env("ROTE_DISABLE_CUDA", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run rote")
}

/// Runs rote and returns stdout, failing the test with stderr when it exits non-zero.
pub fn rote_ok(args: &[&str]) -> String {
    let out = rote(args);
    assert!(out.status.success(), "rote {:?} failed:\n{}", args, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs rote expecting failure; returns stderr.
pub fn rote_err(args: &[&str]) -> String {
    let out = rote(args);
    assert!(!out.status.success(), "rote {:?} should have failed but printed:\n{}", args, String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A .npy file written byte by byte from the format specification (independent of
/// rote's own writer): magic, version 1.0, header length, dict padded with spaces to a
/// multiple of 16 bytes, newline, data.
pub fn raw_npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}", if fortran { "True" } else { "False" });
    while (10 + dict.len() + 1) % 16 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A small valid dataset directory: `n` samples of `d` float32 features, labels i % 3.
pub fn write_dataset(dir: &Path, n: usize, d: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let x: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.37).sin()).collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    std::fs::write(dir.join("x.npy"), raw_npy("<f4", false, &format!("({n}, {d})"), &f32_bytes(&x))).unwrap();
    std::fs::write(dir.join("y.npy"), raw_npy("<i8", false, &format!("({n},)"), &i64_bytes(&y))).unwrap();
    dir.to_path_buf()
}

/// A safetensors file written from the format's specification: u64 header length, the
/// JSON header, the data; F32 tensors only.
pub fn raw_safetensors(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut entries = vec![];
    let mut data = vec![];
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(f32_bytes(values));
        entries.push(format!("\"{name}\":{{\"dtype\":\"F32\",\"shape\":{shape:?},\"data_offsets\":[{start},{}]}}", data.len()));
    }
    let header = format!("{{{}}}", entries.join(","));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    out
}

/// The F32 tensors of a safetensors file, read by the specification (other dtypes are
/// skipped).
pub fn read_f32_tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut out = vec![];
    for (name, v) in header.as_object().unwrap() {
        if name == "__metadata__" || v["dtype"] != "F32" {
            continue;
        }
        let shape: Vec<usize> = v["shape"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap() as usize).collect();
        let (a, b) = (v["data_offsets"][0].as_u64().unwrap() as usize, v["data_offsets"][1].as_u64().unwrap() as usize);
        let values = bytes[8 + n + a..8 + n + b].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        out.push((name.clone(), shape, values));
    }
    out
}

pub fn write_f32_tensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors.iter().map(|(n, s, v)| (n.as_str(), s.clone(), v.clone())).collect();
    std::fs::write(path, raw_safetensors(&refs)).unwrap();
}

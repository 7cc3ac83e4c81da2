//! Sealing throughput: AES-256-GCM chunk sealing alone, and sealed chunks written durably through
//! the blob store (tmp + fsync + rename + directory fsync), each against plain file writes of the
//! same bytes with and without fsync. Chunk sizes: 32 KiB (2 s of 8 kHz PCM16, the default
//! `vault.chunk_ms`) and 256 KiB. Run: `cargo bench --bench seal`.

use std::hint::black_box;
use std::io::Write;

use callveil::vault::blob::{BlobStore, FsBlobStore};
use callveil::vault::crypto::{open_chunk, seal_chunk, DataKey, StreamTag};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn in_memory(c: &mut Criterion) {
    let key = DataKey::generate();
    let mut g = c.benchmark_group("seal_in_memory");
    for size in [32 * 1024, 256 * 1024] {
        let data = payload(size);
        g.throughput(Throughput::Bytes(size as u64));
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::new("seal_chunk", size), &data, |b, d| {
            b.iter(|| {
                i += 1;
                black_box(seal_chunk(&key, "0123456789abcdef", StreamTag::Audio(0), i, false, d).unwrap())
            })
        });
        let sealed = seal_chunk(&key, "0123456789abcdef", StreamTag::Audio(0), 7, false, &data).unwrap();
        g.bench_with_input(BenchmarkId::new("open_chunk", size), &sealed, |b, s| {
            b.iter(|| black_box(open_chunk(&key, "0123456789abcdef", StreamTag::Audio(0), 7, s).unwrap()))
        });
        g.bench_with_input(BenchmarkId::new("memcpy_baseline", size), &data, |b, d| b.iter(|| black_box(d.to_vec())));
    }
    g.finish();
}

fn to_disk(c: &mut Criterion) {
    let key = DataKey::generate();
    let dir = tempfile::tempdir_in(".").or_else(|_| tempfile::tempdir()).unwrap();
    let store = FsBlobStore::open(&dir.path().join("blobs")).unwrap();
    let plain_dir = dir.path().join("plain");
    std::fs::create_dir_all(&plain_dir).unwrap();
    let mut g = c.benchmark_group("seal_to_disk");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(4));
    for size in [32 * 1024, 256 * 1024] {
        let data = payload(size);
        g.throughput(Throughput::Bytes(size as u64));
        let mut i = 0u64;
        g.bench_with_input(BenchmarkId::new("sealed_blob_put_fsync", size), &data, |b, d| {
            b.iter(|| {
                i += 1;
                let obj = seal_chunk(&key, "0123456789abcdef", StreamTag::Audio(0), i, false, d).unwrap();
                store.put(&format!("rec/bench/ch0/{:010}", i % 64), &obj).unwrap();
            })
        });
        let mut j = 0u64;
        g.bench_with_input(BenchmarkId::new("plain_write_fsync", size), &data, |b, d| {
            b.iter(|| {
                j += 1;
                let mut f = std::fs::File::create(plain_dir.join(format!("{}", j % 64))).unwrap();
                f.write_all(d).unwrap();
                f.sync_all().unwrap();
            })
        });
        let mut k = 0u64;
        g.bench_with_input(BenchmarkId::new("plain_write_no_fsync", size), &data, |b, d| {
            b.iter(|| {
                k += 1;
                std::fs::write(plain_dir.join(format!("{}", k % 64)), d).unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, in_memory, to_disk);
criterion_main!(benches);

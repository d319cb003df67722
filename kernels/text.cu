// n-gram Bloom filters (src/text/bloom.rs is the CPU twin; src/text/cuda.rs the host):
// the same two rolling polynomial hashes (src/text/hash.rs), the same blocked layout
// (block = ⌊h1·B / 2^64⌋, the first k distinct 9-bit values of the stream h2,
// fmix64(h2 ⊕ φ), fmix64(h2 ⊕ 2φ), …), so a filter built here is bit-identical to the
// CPU's. Inserting is atomicOr on 64-bit words: the result does not depend on order.
//
// Work is given as segments of a token chunk: segment s starts at token seg_start[s]
// and holds the n-grams first[s] .. first[s + 1] (global n-gram indices). Each thread
// takes a strip of STRIP consecutive n-grams, finds its segment by binary search, hashes
// its first n-gram by Horner's rule and rolls from there, starting afresh at each new
// segment (an n-gram never spans two documents).
#include "common.cuh"

#define TEXT_BASE1 0x9e3779b97f4a7c15ull
#define TEXT_BASE2 0xc2b2ae3d27d4eb4full
#define TEXT_SALT2 0x5851f42d4c957f2dull
#define TEXT_GOLDEN 0x9e3779b97f4a7c15ull
#define TEXT_STRIP 64

__device__ __forceinline__ u64 text_fmix64(u64 h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

// The eight words of a block that the n-gram with hash h2 sets.
__device__ __forceinline__ void text_block_mask(u64 h2, u32 k, u64 mask[8]) {
    for (int i = 0; i < 8; i++) mask[i] = 0;
    u32 got = 0, left = 7;
    u64 word = h2, j = 0;
    while (got < k) {
        if (left == 0) {
            j++;
            word = text_fmix64(h2 ^ (j * TEXT_GOLDEN));
            left = 7;
        }
        u32 b = (u32)(word & 511);
        word >>= 9;
        left--;
        u64 bit = 1ull << (b & 63);
        got += (mask[b >> 6] & bit) == 0;
        mask[b >> 6] |= bit;
    }
}

template <typename T, bool QUERY>
__device__ void text_bloom(const T* tokens, const u64* seg_start, const u64* first, u32 segs, u64 grams, u32 n,
                           u64 top1, u64 top2, u64* words, u64 blocks, u32 k, unsigned char* hits) {
    u64 g0 = ((u64)blockIdx.x * blockDim.x + threadIdx.x) * TEXT_STRIP;
    if (g0 >= grams) return;
    u64 g1 = g0 + TEXT_STRIP < grams ? g0 + TEXT_STRIP : grams;
    u32 lo = 0, hi = segs;
    while (hi - lo > 1) {
        u32 mid = (lo + hi) / 2;
        if (first[mid] <= g0) lo = mid; else hi = mid;
    }
    u32 s = lo;
    bool fresh = true;
    u64 p1 = 0, p2 = 0;
    for (u64 g = g0; g < g1; g++) {
        while (g >= first[s + 1]) {
            s++;
            fresh = true;
        }
        u64 q = seg_start[s] + (g - first[s]);
        if (fresh) {
            p1 = 0;
            p2 = 0;
            for (u32 j = 0; j < n; j++) {
                u64 x = (u64)tokens[q + j] + 1;
                p1 = p1 * TEXT_BASE1 + x;
                p2 = p2 * TEXT_BASE2 + x;
            }
            fresh = false;
        } else {
            u64 out = (u64)tokens[q - 1] + 1, in = (u64)tokens[q + n - 1] + 1;
            p1 = (p1 - out * top1) * TEXT_BASE1 + in;
            p2 = (p2 - out * top2) * TEXT_BASE2 + in;
        }
        u64 h1 = text_fmix64(p1), h2 = text_fmix64(p2 ^ TEXT_SALT2);
        u64 block = __umul64hi(h1, blocks);
        u64 mask[8];
        text_block_mask(h2, k, mask);
        u64* line = words + block * 8;
        if (QUERY) {
            bool all = true;
            for (int w = 0; w < 8; w++) all &= (line[w] & mask[w]) == mask[w];
            hits[g] = all;
        } else {
            for (int w = 0; w < 8; w++) {
                if (mask[w] != 0 && (line[w] & mask[w]) != mask[w]) atomicOr(line + w, mask[w]);
            }
        }
    }
}

#define TEXT_INSERT(NAME, T)                                                                                          \
    extern "C" __global__ void NAME(const T* tokens, const u64* seg_start, const u64* first, u32 segs, u64 grams,     \
                                    u32 n, u64 top1, u64 top2, u64* words, u64 blocks, u32 k) {                       \
        text_bloom<T, false>(tokens, seg_start, first, segs, grams, n, top1, top2, words, blocks, k, 0);              \
    }
TEXT_INSERT(bloom_insert_u8, unsigned char)
TEXT_INSERT(bloom_insert_u16, unsigned short)
TEXT_INSERT(bloom_insert_u32, u32)

extern "C" __global__ void bloom_query_u32(const u32* tokens, const u64* seg_start, const u64* first, u32 segs, u64 grams,
                                           u32 n, u64 top1, u64 top2, const u64* words, u64 blocks, u32 k,
                                           unsigned char* hits) {
    text_bloom<u32, true>(tokens, seg_start, first, segs, grams, n, top1, top2, (u64*)words, blocks, k, hits);
}

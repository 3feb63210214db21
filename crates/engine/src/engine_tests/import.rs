//! Packs made elsewhere (a remote mover's) taken in by `import_pack`: a
//! well-formed pack is stored, indexed and read back; every way a hostile
//! uploader could bend a pack is refused, and a refused pack leaves
//! nothing behind.

use super::fixture::{noise, stored_packs, Fixture};
use crate::error::Error;
use crate::format::{PACK_ENTRY_LEN, PACK_FOOTER_LEN, PACK_HEADER_LEN};
use crate::id::PackId;
use crate::pack::writer::PackWriter;
use crate::pack::{ChunkKind, CompressedChunk};

fn encode(f: &Fixture, kind: ChunkKind, data: &[u8]) -> CompressedChunk {
    f.repo.codec().encoder().unwrap().encode(f.id(data), kind, data).unwrap()
}

/// A pack of `chunks` as a mover builds it: its id and bytes.
fn build(f: &Fixture, chunks: &[CompressedChunk], version: u32) -> (PackId, Vec<u8>) {
    let mut writer = PackWriter::new(Vec::new(), "test pack".into(), version).unwrap();
    for chunk in chunks {
        writer.append(chunk).unwrap();
    }
    let (finished, bytes) = writer.finish().unwrap();
    let _ = f;
    (finished.id, bytes)
}

fn pack_id_of(bytes: &[u8]) -> PackId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
    PackId(id)
}

/// `bytes` with `junk` inserted after the first chunk and every later
/// offset moved along, trailer and footer rewritten: a pack whose trailer
/// is consistent but which hides bytes no entry names.
fn with_hidden_bytes(bytes: &[u8], count: usize, first_len: usize, junk: &[u8]) -> Vec<u8> {
    let trailer_at = bytes.len() - PACK_FOOTER_LEN - count * PACK_ENTRY_LEN;
    let split = PACK_HEADER_LEN + first_len;
    let mut out = bytes[..split].to_vec();
    out.extend_from_slice(junk);
    out.extend_from_slice(&bytes[split..trailer_at]);
    let mut trailer = bytes[trailer_at..trailer_at + count * PACK_ENTRY_LEN].to_vec();
    for entry in trailer.chunks_exact_mut(PACK_ENTRY_LEN).skip(1) {
        let offset = u64::from_le_bytes(entry[32..40].try_into().unwrap()) + junk.len() as u64;
        entry[32..40].copy_from_slice(&offset.to_le_bytes());
    }
    let mut footer = bytes[bytes.len() - PACK_FOOTER_LEN..].to_vec();
    footer[8..40].copy_from_slice(blake3::hash(&trailer).as_bytes());
    out.extend_from_slice(&trailer);
    out.extend_from_slice(&footer);
    out
}

fn assert_refused(f: &Fixture, id: &PackId, bytes: &[u8], why: &str) {
    let before = stored_packs(&f.warm);
    match f.repo.import_pack(id, bytes) {
        Err(Error::Corrupt { detail, .. }) => assert!(detail.contains(why), "{detail:?} should say {why:?}"),
        other => panic!("expected a refusal saying {why:?}, got {other:?}"),
    }
    assert_eq!(stored_packs(&f.warm), before, "a refused pack is not stored");
    assert!(f.repo.pack_table().pack(id).unwrap().is_none());
}

#[test]
fn a_well_formed_pack_is_stored_indexed_and_read_back_once() {
    let f = Fixture::new();
    let (a, b) = (noise("a", 40_000), noise("b", 30_000));
    let chunks = [encode(&f, ChunkKind::Data, &a), encode(&f, ChunkKind::Data, &b)];
    let (id, bytes) = build(&f, &chunks, f.repo.codec().pack_version());
    let imported = f.repo.import_pack(&id, &bytes).unwrap();
    assert!(!imported.already_stored && !imported.metadata);
    assert_eq!(imported.entries.len(), 2);
    assert_eq!(f.repo.read_chunk(&f.id(&a)).unwrap(), a);
    assert_eq!(f.repo.read_chunk(&f.id(&b)).unwrap(), b);
    assert!(f.repo.import_pack(&id, &bytes).unwrap().already_stored);
    assert_eq!(stored_packs(&f.warm).len(), 1);
}

#[test]
fn hostile_packs_are_refused_and_leave_nothing() {
    let f = Fixture::new();
    let version = f.repo.codec().pack_version();
    let (a, b) = (noise("a", 40_000), noise("b", 30_000));
    let chunk_a = encode(&f, ChunkKind::Data, &a);
    let first_len = chunk_a.bytes.len();
    let chunk_b = encode(&f, ChunkKind::Data, &b);
    let (id, bytes) = build(&f, &[chunk_a, chunk_b], version);

    assert_refused(&f, &PackId([9; 16]), &bytes, "does not match its name");
    let cut = &bytes[..bytes.len() - 10];
    assert_refused(&f, &pack_id_of(cut), cut, "");
    let mut flipped = bytes.clone();
    flipped[PACK_HEADER_LEN + 5] ^= 1;
    if !f.repo.protection().is_encrypted() {
        // Unencrypted: the server checks content too.
        assert_refused(&f, &pack_id_of(&flipped), &flipped, "");
    }
    let hidden = with_hidden_bytes(&bytes, 2, first_len, b"smuggled bytes");
    assert_refused(&f, &pack_id_of(&hidden), &hidden, "not right after the previous one");

    let twice = [encode(&f, ChunkKind::Data, &a), encode(&f, ChunkKind::Data, &a)];
    let (twice_id, twice_bytes) = build(&f, &twice, version);
    assert_refused(&f, &twice_id, &twice_bytes, "listed twice");

    let tree = crate::tree::Tree::default().encode();
    let mixed = [encode(&f, ChunkKind::Data, &a), encode(&f, ChunkKind::Tree, &tree)];
    let (mixed_id, mixed_bytes) = build(&f, &mixed, version);
    assert_refused(&f, &mixed_id, &mixed_bytes, "another class");

    let other_version = if version == crate::format::PACK_VERSION {
        crate::format::SEALED_PACK_VERSION
    } else {
        crate::format::PACK_VERSION
    };
    let (old_id, old_bytes) = build(&f, &[encode(&f, ChunkKind::Data, &a)], other_version);
    assert_refused(&f, &old_id, &old_bytes, "pack version");

    let (empty_id, empty_bytes) = build(&f, &[], version);
    assert_refused(&f, &empty_id, &empty_bytes, "holds no chunk");

    // After all that, the real pack still goes in.
    f.repo.import_pack(&id, &bytes).unwrap();
    assert_eq!(f.repo.read_chunk(&f.id(&b)).unwrap(), b);
}

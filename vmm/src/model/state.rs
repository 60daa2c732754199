//! The model's memory: physical folios, processes with page tables and VMAs, anon_vmas, the
//! device's holders, locks and per-thread registers. A SIMULATION of Linux anonymous memory, kept
//! small (fixed arrays of small integers) so the explorer can clone and hash a state cheaply.
//!
//! What is modelled and what is left out:
//! - a THP is a folio of [`SUBS`] subpages (standing for 512); a small page is a folio of one;
//! - a virtual address is a *slot* (one 4 KiB page); [`SUBS`] slots make one PMD;
//! - refcount, per-subpage mapcount, compound (PMD) mapcount, pincount (large folios, FOLL_PIN
//!   eras), AnonExclusive per subpage, swapcache, KSM, and a content version per subpage (the
//!   last write that reached it, so a lost write is visible);
//! - swapped-out pages stay in the swapcache (the model never evicts: a swap entry points at its
//!   folio), which is what happens to a page that still has GUP references;
//! - no file pages, no zero page (a read fault allocates a fresh page), no LRU caches.
//!
//! Nothing here decides a rule: that is `era`. Nothing here runs an operation: that is `ops`.

use std::hash::{Hash, Hasher};

/// Subpages in a model THP (stands for HPAGE_PMD_NR = 512).
pub const SUBS: usize = 4;
/// Virtual page slots per process.
pub const SLOTS: usize = 12;
/// PMDs per process (`SLOTS / SUBS`).
pub const PMDS: usize = SLOTS / SUBS;
/// Physical folios in the machine.
pub const FOLIOS: usize = 12;
/// Processes: 0 is the VMM (it owns guest RAM), 1 is a forked child.
pub const PROCS: usize = 2;
/// VMAs per process.
pub const VMAS: usize = 4;
/// anon_vmas in the machine.
pub const ANON_VMAS: usize = 8;
/// VMAs an anon_vma can list.
pub const AV_LIST: usize = 6;
/// Device holders (pins or references).
pub const HOLDERS: usize = 4;
/// Concurrent threads the explorer interleaves.
pub const THREADS: usize = 3;
/// "No folio / no anon_vma".
pub const NONE: u8 = u8::MAX;
/// GUP_PIN_COUNTING_BIAS (include/linux/mm.h): what a FOLL_PIN adds to a small page's refcount.
pub const PIN_BIAS: u16 = 1024;

/// One 4 KiB page of a folio.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sub {
    /// PTE mappings of this subpage (`page->_mapcount + 1`).
    pub mapcount: u8,
    /// PG_anon_exclusive (5.19+; other eras never set it).
    pub exclusive: bool,
    /// The last write that reached this page's contents.
    pub version: u8,
}

/// A physical folio: a small page (`nr == 1`) or a THP (`nr == SUBS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Folio {
    pub live: bool,
    pub nr: u8,
    /// `page_count()` of the head page: one per mapping (PMD or PTE), one for the swapcache, one
    /// per FOLL_GET, [`PIN_BIAS`] per FOLL_PIN on a small page, one per FOLL_PIN on a large one.
    pub refcount: u16,
    /// Exact pin count of a large folio (`_pincount`, 5.7+). Small pages use the bias.
    pub pincount: u16,
    /// PMD mappings (compound mapcount).
    pub cmap: u8,
    pub swapcache: bool,
    pub ksm: bool,
    /// `page->mapping`: the anon_vma the rmap walk starts from.
    pub anon_vma: u8,
    pub subs: [Sub; SUBS],
}

impl Folio {
    /// PTE mappings of all subpages plus PMD mappings (`total_mapcount()` of 4.6).
    pub fn total_mapcount(&self) -> u16 {
        self.subs[..self.nr as usize]
            .iter()
            .map(|s| s.mapcount as u16)
            .sum::<u16>()
            + self.cmap as u16
    }
    /// Mapping references: each PTE and each PMD mapping holds one reference.
    pub fn mapping_refs(&self) -> u16 {
        self.total_mapcount()
    }
    /// References that are neither mappings nor the swapcache: GUP, pins, other kernel users.
    pub fn extra_refs(&self) -> u16 {
        self.refcount
            .saturating_sub(self.mapping_refs())
            .saturating_sub(self.swapcache as u16)
    }
    /// `page_trans_huge_mapcount()` (seed 002, Andrea): the highest subpage mapcount plus the
    /// compound mapcount. (DoubleMap never arises: the model keeps PTE and PMD counts apart.)
    pub fn trans_huge_mapcount(&self, sub: usize) -> u16 {
        if self.nr == 1 {
            return self.subs[sub].mapcount as u16;
        }
        let max = self.subs[..self.nr as usize]
            .iter()
            .map(|s| s.mapcount as u16)
            .max()
            .unwrap_or(0);
        max + self.cmap as u16
    }
    pub fn large(&self) -> bool {
        self.nr > 1
    }
}

/// A page-table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pte {
    #[default]
    None,
    Present {
        folio: u8,
        sub: u8,
        write: bool,
        /// userfaultfd write-protect marker.
        uffd: bool,
    },
    /// A swap entry; the page is still in the swapcache. `exclusive`: the 5.19+ swap-entry bit.
    Swap { folio: u8, sub: u8, exclusive: bool },
    /// A migration entry: the page is being migrated; faults wait.
    Migration {
        folio: u8,
        sub: u8,
        write: bool,
        exclusive: bool,
    },
}

impl Pte {
    /// The page an entry refers to, present or not.
    pub fn page(self) -> Option<(u8, u8)> {
        match self {
            Pte::None => None,
            Pte::Present { folio, sub, .. }
            | Pte::Swap { folio, sub, .. }
            | Pte::Migration { folio, sub, .. } => Some((folio, sub)),
        }
    }
}

/// A PMD entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pmd {
    #[default]
    None,
    /// Points to a page table: the slots' [`Pte`]s are valid.
    Table,
    /// Maps a THP.
    Huge { folio: u8, write: bool, uffd: bool },
    /// The page table is detached for a collapse (`pmdp_collapse_flush`): walkers see nothing.
    Detached,
}

/// A VMA: `[start, end)` in slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Vma {
    pub live: bool,
    pub start: u8,
    pub end: u8,
    pub write: bool,
    /// MADV_DONTFORK.
    pub dontfork: bool,
    /// The VMA's own anon_vma (`vma->anon_vma`).
    pub anon_vma: u8,
    /// The anon_vmas this VMA is chained to (`vma->anon_vma_chain`), a bit per anon_vma.
    pub chain: u8,
}

impl Vma {
    pub fn contains(&self, slot: u8) -> bool {
        self.live && self.start <= slot && slot < self.end
    }
}

/// A process (an mm).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Proc {
    pub live: bool,
    /// `mm->has_pinned` / MMF_HAS_PINNED: set by the first FOLL_PIN (5.9+ fork rule).
    pub has_pinned: bool,
    pub pmd: [Pmd; PMDS],
    pub pte: [Pte; SLOTS],
    pub vmas: [Vma; VMAS],
}

impl Proc {
    pub fn vma_at(&self, slot: u8) -> Option<usize> {
        self.vmas.iter().position(|v| v.contains(slot))
    }
}

/// An anon_vma and the VMAs it lists, in rmap-walk order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AnonVma {
    pub live: bool,
    pub len: u8,
    /// Entries are `proc << 4 | vma`.
    pub list: [u8; AV_LIST],
}

impl AnonVma {
    pub fn entries(&self) -> &[u8] {
        &self.list[..self.len as usize]
    }
}

/// How the device holds a page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HoldKind {
    /// FOLL_PIN | FOLL_LONGTERM (io_uring fixed buffers, VFIO); before 5.6 the era's GUP reference.
    #[default]
    Pin,
    /// FOLL_GET (vmsplice, O_DIRECT before 6.x).
    Get,
}

/// A device holder: a pin or `count` references on one subpage, taken at guest offset `off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Holder {
    pub live: bool,
    pub kind: HoldKind,
    /// Taken with FOLL_WRITE.
    pub write: bool,
    pub count: u16,
    pub proc: u8,
    /// Offset (in slots) from the guest RAM base at the time the device uses it.
    pub off: u8,
    pub folio: u8,
    pub sub: u8,
}

/// A thread's registers: which op it is at, which phase of that op, and saved values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Regs {
    pub pc: u8,
    pub phase: u8,
    pub reg: [u8; 3],
}

/// A finding that is not a data verdict (seed 001).
pub const FINDING_BIAS_FALSE_POSITIVE: u8 = 1;

/// The whole machine. `Hash` is written out (see [`State::hash`]); equality is the derived,
/// exact one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub folios: [Folio; FOLIOS],
    pub procs: [Proc; PROCS],
    pub anon_vmas: [AnonVma; ANON_VMAS],
    pub holders: [Holder; HOLDERS],
    pub threads: [Regs; THREADS],
    /// Slot where guest RAM starts in process 0 (moves with mremap).
    pub guest_base: u8,
    /// Slots of guest RAM.
    pub guest_len: u8,
    /// The version each guest offset must read (last write by guest or device).
    pub expected: [u8; SUBS * 2],
    pub next_version: u8,
    /// Lock owners, `thread + 1`, 0 = free.
    pub mmap_lock: u8,
    pub ptl: u8,
    pub anon_vma_lock: u8,
    /// Threads inside gup_fast's interrupts-off window (a bit each): TLB-flush IPIs wait for them.
    pub irqoff: u8,
    /// Findings (`FINDING_*` bits).
    pub findings: u8,
}

impl State {
    pub fn folio(&self, f: u8) -> &Folio {
        &self.folios[f as usize]
    }
    pub fn folio_mut(&mut self, f: u8) -> &mut Folio {
        &mut self.folios[f as usize]
    }
    /// A free folio slot, or `None` when the model's machine is full.
    pub fn alloc_folio(&mut self, nr: u8, anon_vma: u8) -> Option<u8> {
        let i = self.folios.iter().position(|f| !f.live)?;
        self.folios[i] = Folio {
            live: true,
            nr,
            anon_vma,
            ..Folio::default()
        };
        Some(i as u8)
    }
    pub fn alloc_anon_vma(&mut self) -> Option<u8> {
        let i = self.anon_vmas.iter().position(|a| !a.live)?;
        self.anon_vmas[i] = AnonVma {
            live: true,
            ..AnonVma::default()
        };
        Some(i as u8)
    }
    pub fn new_version(&mut self) -> u8 {
        self.next_version = self.next_version.wrapping_add(1);
        self.next_version
    }
    /// The entry mapping `slot` in `proc`: a PMD mapping yields the subpage.
    pub fn lookup(&self, proc: u8, slot: u8) -> Lookup {
        let p = &self.procs[proc as usize];
        match p.pmd[slot as usize / SUBS] {
            Pmd::None | Pmd::Detached => Lookup::None,
            Pmd::Huge { folio, write, uffd } => Lookup::Huge {
                folio,
                sub: (slot as usize % SUBS) as u8,
                write,
                uffd,
            },
            Pmd::Table => Lookup::Pte(p.pte[slot as usize]),
        }
    }
    /// The page mapped (present) at `slot` in `proc`.
    pub fn mapped_page(&self, proc: u8, slot: u8) -> Option<(u8, u8)> {
        match self.lookup(proc, slot) {
            Lookup::Huge { folio, sub, .. } => Some((folio, sub)),
            Lookup::Pte(Pte::Present { folio, sub, .. }) => Some((folio, sub)),
            _ => None,
        }
    }
    /// Pins (FOLL_PIN holders) on this subpage.
    pub fn pins_on(&self, folio: u8, sub: u8) -> u16 {
        self.holders
            .iter()
            .filter(|h| h.live && h.kind == HoldKind::Pin && h.folio == folio && h.sub == sub)
            .map(|h| h.count)
            .sum()
    }
    /// Swap entries referring to this subpage (`page_swapcount()`).
    pub fn swapcount(&self, folio: u8, sub: u8) -> u16 {
        self.procs
            .iter()
            .filter(|p| p.live)
            .flat_map(|p| p.pte.iter())
            .filter(|e| matches!(e, Pte::Swap { folio: f, sub: s, .. } if *f == folio && *s == sub))
            .count() as u16
    }
    /// Drops one reference; a folio with none left is freed.
    pub fn put(&mut self, folio: u8, n: u16) {
        let f = self.folio_mut(folio);
        f.refcount = f.refcount.saturating_sub(n);
        if f.refcount == 0 {
            *f = Folio::default();
        }
    }
}

fn pte_word(e: Pte) -> u32 {
    let (tag, folio, sub, a, b) = match e {
        Pte::None => (0u8, 0u8, 0u8, false, false),
        Pte::Present {
            folio,
            sub,
            write,
            uffd,
        } => (1, folio, sub, write, uffd),
        Pte::Swap {
            folio,
            sub,
            exclusive,
        } => (2, folio, sub, exclusive, false),
        Pte::Migration {
            folio,
            sub,
            write,
            exclusive,
        } => (3, folio, sub, write, exclusive),
    };
    u32::from_le_bytes([tag, folio, sub, a as u8 | (b as u8) << 1])
}

fn pmd_word(e: Pmd) -> u32 {
    let (tag, folio, write, uffd) = match e {
        Pmd::None => (0u8, 0u8, false, false),
        Pmd::Table => (1, 0, false, false),
        Pmd::Huge { folio, write, uffd } => (2, folio, write, uffd),
        Pmd::Detached => (3, 0, false, false),
    };
    u32::from_le_bytes([tag, folio, write as u8, uffd as u8])
}

fn pair(lo: u32, hi: u32) -> u64 {
    lo as u64 | (hi as u64) << 32
}

/// The explorer hashes every state it reaches, so this packs the fields into 64-bit words (at
/// most about 80 multiply-rotates per state, fewer with dead entries skipped) instead of the
/// derived field-by-field walk (one per byte-sized field, plus discriminants and slice lengths),
/// which was most of the explorer's time. Every field is destructured without `..`, so a new
/// field does not compile until it is hashed here. Equal states hash equally because each word
/// is a function of the fields alone; what is skipped only makes collisions likelier, and the
/// explorer compares whole states on a hash hit.
impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let State {
            folios,
            procs,
            anon_vmas,
            holders,
            threads,
            guest_base,
            guest_len,
            expected,
            next_version,
            mmap_lock,
            ptl,
            anon_vma_lock,
            irqoff,
            findings,
        } = self;
        // Dead folios, VMAs, anon_vmas and holders are skipped (a liveness mask stands for them);
        // equality still compares them, so this only trades collisions for speed.
        let mut live = 0u64;
        let mut bit = 0;
        let mut mark = |l: bool| {
            live |= (l as u64) << (bit % 64);
            bit += 1;
        };
        folios.iter().for_each(|f| mark(f.live));
        anon_vmas.iter().for_each(|a| mark(a.live));
        holders.iter().for_each(|x| mark(x.live));
        procs
            .iter()
            .for_each(|p| p.vmas.iter().for_each(|v| mark(v.live)));
        h.write_u64(live);
        for f in folios.iter().filter(|f| f.live) {
            let Folio {
                live,
                nr,
                refcount,
                pincount,
                cmap,
                swapcache,
                ksm,
                anon_vma,
                subs,
            } = *f;
            const { assert!(SUBS == 4, "one word holds four subpages") };
            let mut counts = [0u8; 8];
            let mut excl = 0u8;
            for (i, sub) in subs.iter().enumerate() {
                let Sub {
                    mapcount,
                    exclusive,
                    version,
                } = *sub;
                counts[2 * i] = mapcount;
                counts[2 * i + 1] = version;
                excl |= (exclusive as u8) << i;
            }
            let [r0, r1] = refcount.to_le_bytes();
            let [p0, p1] = pincount.to_le_bytes();
            h.write_u64(u64::from_le_bytes([
                live as u8 | (swapcache as u8) << 1 | (ksm as u8) << 2 | excl << 3,
                nr,
                r0,
                r1,
                p0,
                p1,
                cmap,
                anon_vma,
            ]));
            h.write_u64(u64::from_le_bytes(counts));
        }
        for p in procs {
            let Proc {
                live,
                has_pinned,
                pmd,
                pte,
                vmas,
            } = p;
            h.write_u64(*live as u64 | (*has_pinned as u64) << 1);
            if !live {
                continue;
            }
            for c in pmd.chunks(2) {
                h.write_u64(pair(pmd_word(c[0]), c.get(1).map_or(0, |e| pmd_word(*e))));
            }
            // Only the page tables a PMD points to (or holds detached): those are the PTEs a
            // walk can see; the others are skipped like dead entries.
            for (table, e) in pte.chunks(SUBS).zip(pmd) {
                if matches!(e, Pmd::Table | Pmd::Detached) {
                    for c in table.chunks(2) {
                        h.write_u64(pair(pte_word(c[0]), c.get(1).map_or(0, |e| pte_word(*e))));
                    }
                }
            }
            for v in vmas.iter().filter(|v| v.live) {
                let Vma {
                    live,
                    start,
                    end,
                    write,
                    dontfork,
                    anon_vma,
                    chain,
                } = *v;
                h.write_u64(u64::from_le_bytes([
                    live as u8 | (write as u8) << 1 | (dontfork as u8) << 2,
                    start,
                    end,
                    anon_vma,
                    chain,
                    0,
                    0,
                    0,
                ]));
            }
        }
        for a in anon_vmas.iter().filter(|a| a.live) {
            let AnonVma { live, len, list } = *a;
            let [l0, l1, l2, l3, l4, l5] = list;
            h.write_u64(u64::from_le_bytes([
                live as u8, len, l0, l1, l2, l3, l4, l5,
            ]));
        }
        for x in holders.iter().filter(|x| x.live) {
            let Holder {
                live,
                kind,
                write,
                count,
                proc,
                off,
                folio,
                sub,
            } = *x;
            let [c0, c1] = count.to_le_bytes();
            h.write_u64(u64::from_le_bytes([
                live as u8 | (write as u8) << 1 | ((kind == HoldKind::Get) as u8) << 2,
                c0,
                c1,
                proc,
                off,
                folio,
                sub,
                0,
            ]));
        }
        for r in threads {
            let Regs { pc, phase, reg } = *r;
            h.write_u64(u64::from_le_bytes([
                pc, phase, reg[0], reg[1], reg[2], 0, 0, 0,
            ]));
        }
        h.write_u64(u64::from_le_bytes(*expected));
        h.write_u64(u64::from_le_bytes([
            *guest_base,
            *guest_len,
            *next_version,
            *mmap_lock,
            *ptl,
            *anon_vma_lock,
            *irqoff,
            *findings,
        ]));
    }
}

/// What a page-table walk finds at a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    None,
    Huge {
        folio: u8,
        sub: u8,
        write: bool,
        uffd: bool,
    },
    Pte(Pte),
}

/// A 64-bit multiply-rotate hasher in the style of rustc's FxHasher. The state is a few hundred
/// bytes of small integers hashed once per visit; SipHash's DoS resistance buys nothing here and
/// costs several times the time. Written here (15 lines) rather than adding a dependency.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        }
        for &b in chunks.remainder() {
            self.add(b as u64);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// `BuildHasher` for the explorer's visited set.
pub type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

/// Hash of a state (for tests and diagnostics).
pub fn state_hash(s: &State) -> u64 {
    let mut h = FxHasher::default();
    s.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: a folio, what a count helper must say. A bug here would mis-state every rule.
    #[test]
    fn folio_counts() {
        let mut thp = Folio {
            live: true,
            nr: SUBS as u8,
            refcount: 5,
            ..Folio::default()
        };
        thp.subs[0].mapcount = 1;
        thp.subs[1].mapcount = 1;
        thp.subs[2].mapcount = 1;
        thp.subs[3].mapcount = 1;
        let rows: &[(&str, Folio, u16, u16, u16)] = &[
            // PTE-mapped THP with one extra reference (a pin before FOLL_PIN existed).
            ("pte-mapped thp + 1 ref", thp, 4, 1, 1),
            (
                "pmd-mapped thp",
                Folio {
                    live: true,
                    nr: SUBS as u8,
                    refcount: 1,
                    cmap: 1,
                    ..Folio::default()
                },
                1,
                0,
                1,
            ),
        ];
        for (what, f, total, extra, thm) in rows {
            assert_eq!(f.total_mapcount(), *total, "{what}: total_mapcount");
            assert_eq!(f.extra_refs(), *extra, "{what}: extra refs");
            assert_eq!(
                f.trans_huge_mapcount(0),
                *thm,
                "{what}: trans_huge_mapcount"
            );
        }
    }

    #[test]
    fn state_is_small_and_hashes_stably() {
        let s = State::default();
        assert!(
            std::mem::size_of::<State>() < 1024,
            "state grew: {}",
            std::mem::size_of::<State>()
        );
        assert_eq!(state_hash(&s), state_hash(&s.clone()));
    }

    /// Each row changes one field of a live entry: the packed hash must see it (a field left out
    /// of the packing would make every such pair collide and slow the explorer down).
    #[test]
    fn packed_hash_sees_each_field() {
        let mut base = State::default();
        base.folios[0] = Folio {
            live: true,
            nr: SUBS as u8,
            refcount: 1,
            ..Folio::default()
        };
        base.procs[0].live = true;
        base.procs[0].pmd[0] = Pmd::Table;
        base.procs[0].vmas[0] = Vma {
            live: true,
            end: 4,
            ..Vma::default()
        };
        base.anon_vmas[0].live = true;
        base.holders[0].live = true;
        type Edit = fn(&mut State);
        let rows: &[(&str, Edit)] = &[
            ("refcount", |s| s.folios[0].refcount = 300),
            ("pincount", |s| s.folios[0].pincount = 1),
            ("sub 3 exclusive", |s| s.folios[0].subs[3].exclusive = true),
            ("sub 2 version", |s| s.folios[0].subs[2].version = 7),
            ("pte write", |s| {
                s.procs[0].pte[3] = Pte::Present {
                    folio: 0,
                    sub: 3,
                    write: true,
                    uffd: false,
                }
            }),
            ("pmd huge", |s| {
                s.procs[0].pmd[1] = Pmd::Huge {
                    folio: 0,
                    write: false,
                    uffd: false,
                }
            }),
            ("vma chain", |s| s.procs[0].vmas[0].chain = 2),
            ("anon_vma list", |s| s.anon_vmas[0].list[5] = 1),
            ("holder kind", |s| s.holders[0].kind = HoldKind::Get),
            ("thread reg", |s| s.threads[2].reg[2] = 1),
            ("expected", |s| s.expected[7] = 1),
            ("irqoff", |s| s.irqoff = 4),
            ("findings", |s| s.findings = FINDING_BIAS_FALSE_POSITIVE),
        ];
        for (what, edit) in rows {
            let mut s = base.clone();
            edit(&mut s);
            assert_ne!(state_hash(&s), state_hash(&base), "{what}");
        }
    }
}

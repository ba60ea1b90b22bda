//! The per-frame tc probes. They never drop, redirect or modify a frame: all return
//! `TC_ACT_UNSPEC`, which in TCX means "next program" and in a clsact direct-action filter
//! "continue", so whatever else is attached still runs. Frames that cannot matter leave
//! after a few loads from the context: frame and byte totals come from the link's own
//! statistics, so the probes count only what they judge.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use diag_common::{Direction, PACKET_HOST, PACKET_OTHERHOST};

use crate::{
    maps,
    skb::{on_frame, Skb},
};

/// Frames the VM writes into the tap (tc ingress on the host side), on taps that carry
/// the full probe: bridged taps, and every tap with `--datapath tc`.
#[classifier]
pub fn tap_ingress(ctx: TcContext) -> i32 {
    let skb = Skb::read(ctx.skb.skb as *const __sk_buff);
    let foreign = skb.pkt_type == PACKET_OTHERHOST;
    // Broadcasts and multicasts of IP and the like never matter; a frame to the tap's own
    // MAC matters only while a mismatch window is open (it ends it).
    let matters = !skb.header_only()
        || foreign
        || (skb.pkt_type == PACKET_HOST && maps::window_open(skb.ifindex));
    if matters {
        on_frame(&ctx, &skb, Direction::FromVm, foreign, false);
    }
    TC_ACT_UNSPEC
}

/// Frames the host sends to the VM (tc egress on the host side): ARP, RARP and tagged
/// frames can be notable, and after a RARP from the VM the first data frame (read whole,
/// to tell data from neighbour discovery) while the tap's hint says one is awaited.
#[classifier]
pub fn tap_egress(ctx: TcContext) -> i32 {
    let skb = Skb::read(ctx.skb.skb as *const __sk_buff);
    let awaited = maps::hinted(skb.ifindex);
    if !skb.header_only() || awaited {
        on_frame(&ctx, &skb, Direction::ToVm, false, awaited);
    }
    TC_ACT_UNSPEC
}

/// The per-frame probe a tap of the drop-driven datapath gets while stale frames may end:
/// it times the first frame from the VM to the tap's own MAC after them, to the frame. It
/// looks at nothing else (the drop program counts the stale frames, the socket filter the
/// ARP), so no frame is counted twice.
#[classifier]
pub fn tap_ingress_assist(ctx: TcContext) -> i32 {
    let skb = Skb::read(ctx.skb.skb as *const __sk_buff);
    if skb.pkt_type == PACKET_HOST && skb.header_only() && maps::window_open(skb.ifindex) {
        on_frame(&ctx, &skb, Direction::FromVm, false, false);
    }
    TC_ACT_UNSPEC
}

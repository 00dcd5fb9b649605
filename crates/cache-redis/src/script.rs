//! The two Lua scripts behind removal markers.
//!
//! A removal leaves a marker (an entry with flag bit 1, as of the removal)
//! instead of deleting the key, and a fill is written only if the key holds
//! nothing as new as the fill's load. Both must read and write the key in
//! one step, which is what a script gives: no other command runs between
//! its `GETRANGE` and its `SET`. They read only the 19-byte header, never
//! the value. See `codec.rs` for the header.
//!
//! Scripts are loaded with `SCRIPT LOAD` when the layer is built (so a user
//! without the permission hears of it then) and called with `EVALSHA`. A
//! server that lost them (restarted, failed over, `SCRIPT FLUSH`) answers
//! `NOSCRIPT`; the layer loads them again and resends.

/// `KEYS[1]`: the key. `ARGV[1]`: the encoded entry; `ARGV[2]`: its "as of"
/// (server unix microseconds, decimal); `ARGV[3]`: its expiry (server unix
/// milliseconds for `PXAT`, `0` for none).
///
/// Returns 1 if the entry was stored, 0 if the key holds a newer entry, or
/// a marker as new as the fill or newer (the fill is stale). An entry exactly
/// as new is overwritten, so that resending a fill (after a dropped
/// connection) stores it again rather than calling it stale. Anything else
/// under the key (another format, another type) is overwritten, as a plain
/// `SET` would. "As of" values are below 2^53, so Lua's doubles hold them
/// exactly.
pub(crate) const FILL: &str = r"
local head = redis.pcall('GETRANGE', KEYS[1], 0, 18)
if type(head) == 'string' and #head == 19
    and string.byte(head, 1) == 202 and string.byte(head, 2) == 2 then
  local as_of = 0
  for i = 12, 19 do as_of = as_of * 256 + string.byte(head, i) end
  local fill = tonumber(ARGV[2])
  local marker = math.floor(string.byte(head, 3) / 2) % 2 == 1
  if as_of > fill or (marker and as_of == fill) then return 0 end
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[3])
end
return 1
";

/// `KEYS[1]`: the key. `ARGV[1]`: the encoded marker; `ARGV[2]`: its expiry
/// (server unix milliseconds, for `PXAT`).
///
/// Returns 1 if the key held something other than a marker (a value was
/// removed), 0 otherwise: resent after a dropped connection, a removal that
/// had landed reports 0.
pub(crate) const REMOVE: &str = r"
local head = redis.pcall('GETRANGE', KEYS[1], 0, 2)
local removed = 1
if type(head) == 'string' then
  if #head == 0 then
    removed = 0
  elseif #head == 3 and string.byte(head, 1) == 202 and string.byte(head, 2) == 2
      and math.floor(string.byte(head, 3) / 2) % 2 == 1 then
    removed = 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
return removed
";

/// The SHA1 digests `SCRIPT LOAD` answered for [`FILL`] and [`REMOVE`].
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) fill: String,
    pub(crate) remove: String,
}

/// Whether a reply says the server does not have the script.
pub(crate) fn is_noscript(reply: &redis::RedisResult<redis::Value>) -> bool {
    matches!(reply, Err(err) if err.code() == Some("NOSCRIPT"))
}

-- Fragment: entry_event(fields), the stored CloudEvent JSON of a stream entry's
-- flat field list {name, value, ...}, or nil when it has none.
-- KEYS: none. ARGV: none.
local function entry_event(fields)
  local event = nil
  for i = 1, #fields, 2 do
    if fields[i] == {{FIELD_EVENT}} then event = fields[i + 1] end
  end
  return event
end

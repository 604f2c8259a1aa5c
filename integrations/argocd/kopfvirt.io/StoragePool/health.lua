-- One self-contained script per kind, as argocd-cm holds them (a check loads no module):
-- the small helpers below (field, text, condition) repeat in each on purpose.
-- Argo CD health of a kopfvirt.io StoragePool: each node's agent reports the pool's state
-- there (status.nodes), and the controller sums them up in the Ready condition: True when
-- every Ready node the pool is offered on reports it Active (docs/gitops.md has the
-- table). Lua 5.1 with Argo CD's default libraries only (base and table), and no error on
-- any input.

local function field(t, key)
  if type(t) == "table" then
    return t[key]
  end
  return nil
end

local function text(v)
  if type(v) == "string" then
    return v
  end
  return ""
end

local function show(v)
  if type(v) == "string" or type(v) == "number" or type(v) == "boolean" then
    return tostring(v)
  end
  return "(" .. type(v) .. ")"
end

local function condition(status, kind)
  local conditions = field(status, "conditions")
  if type(conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(conditions) do
    if type(c) == "table" and c.type == kind then
      return c
    end
  end
  return nil
end

local function why(c, fallback)
  local reason, message = text(field(c, "reason")), text(field(c, "message"))
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

-- "node: why" of every node that reports the pool Failed or Inactive, by node name (a
-- table's order is not the object's).
local function failing(nodes)
  local names = {}
  if type(nodes) == "table" then
    for name, entry in pairs(nodes) do
      local state = field(entry, "state")
      if type(name) == "string" and (state == "Failed" or state == "Inactive") then
        table.insert(names, name)
      end
    end
  end
  table.sort(names)
  local out = {}
  for _, name in ipairs(names) do
    local message = text(nodes[name].message)
    if message == "" then
      message = nodes[name].state
    end
    table.insert(out, name .. ": " .. message)
  end
  return table.concat(out, "; ")
end

local hs = {}
local status = field(obj, "status")
if type(status) ~= "table" then
  hs.status = "Progressing"
  hs.message = "waiting for the node agents to report the pool"
  return hs
end

local generation = field(field(obj, "metadata"), "generation")
local observed = field(status, "observedGeneration")
if type(generation) == "number" and type(observed) == "number" and observed < generation then
  hs.status = "Progressing"
  hs.message = "waiting for the spec to be observed (generation " .. show(generation) .. ", observed "
    .. show(observed) .. ")"
  return hs
end

local ready = condition(status, "Ready")
local bad = failing(field(status, "nodes"))
if field(ready, "status") == "True" then
  hs.status = "Healthy"
  hs.message = text(ready.message)
  if hs.message == "" then
    hs.message = "active"
  end
elseif field(ready, "status") == "False" and (bad ~= "" or ready.reason == "NoNodes") then
  -- A node's libvirt failed it, or no node offers it: an admin must look.
  hs.status = "Degraded"
  hs.message = why(ready, bad)
elseif ready == nil and bad ~= "" then
  hs.status = "Degraded"
  hs.message = "NotActive: " .. bad
elseif ready == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the controller to judge the pool"
else
  -- Not yet reported by every node it is offered on.
  hs.status = "Progressing"
  hs.message = why(ready, "not ready yet")
end
return hs

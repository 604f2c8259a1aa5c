-- One self-contained script per kind, as argocd-cm holds them (a check loads no module):
-- the small helpers below (field, text, condition) repeat in each on purpose.
-- Argo CD health of a kopfvirt.io PassthroughDevice: a PCI function its node's agent
-- publishes, which an admin may keep in Git to set spec.permitted or spec.resourceName
-- (docs/gitops.md has the table). Whether the device can be passed through is a fact of
-- the hardware, reported in the message, not a fault of the object: a published device
-- is Healthy, as its agent's Ready condition says. Lua 5.1 with Argo CD's default
-- libraries only (base and table), and no error on any input.

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

local hs = {}
local status = field(obj, "status")
local address = field(status, "address")
if type(address) ~= "string" then
  hs.status = "Progressing"
  hs.message = "waiting for a node agent to publish the device"
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

local parts = {}
local node = field(status, "node")
if type(node) == "string" then
  table.insert(parts, node .. " " .. address)
else
  table.insert(parts, address)
end
if field(status, "permitted") == true then
  table.insert(parts, "permitted")
else
  table.insert(parts, "not permitted")
end
local reason, message = text(field(status, "reason")), text(field(status, "message"))
if field(status, "assignable") == true then
  table.insert(parts, "assignable")
elseif reason ~= "" and message ~= "" then
  table.insert(parts, "not assignable (" .. reason .. ": " .. message .. ")")
elseif reason ~= "" or message ~= "" then
  table.insert(parts, "not assignable (" .. reason .. message .. ")")
else
  table.insert(parts, "not assignable")
end
local holder = field(status, "holder")
if type(field(holder, "namespace")) == "string" and type(field(holder, "name")) == "string" then
  table.insert(parts, "held by VM " .. holder.namespace .. "/" .. holder.name)
end
hs.status = "Healthy"
hs.message = table.concat(parts, ", ")
return hs

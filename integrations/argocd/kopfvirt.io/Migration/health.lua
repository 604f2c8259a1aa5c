-- One self-contained script per kind, as argocd-cm holds them (a check loads no module):
-- the small helpers below (field, text, condition) repeat in each on purpose.
-- Argo CD health of a kopfvirt.io Migration, from the status the controller and the source
-- node's agent write (docs/gitops.md has the table). Lua 5.1 with Argo CD's default
-- libraries only (base and table: no string or math), and no error on any input.

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

local function why(reason, message, fallback)
  reason, message = text(reason), text(message)
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

local function say(phase, detail)
  if detail ~= nil and detail ~= "" then
    return phase .. ": " .. detail
  end
  return phase
end

local hs = {}
local status = field(obj, "status")
if type(status) ~= "table" then
  hs.status = "Progressing"
  hs.message = "waiting for the controller to report status"
  return hs
end

local phase = field(status, "phase")
local source, target = field(status, "sourceNode"), field(status, "targetNode")

-- A finished Migration is judged by how it ended, whatever is done to its spec afterwards.
if phase == "Succeeded" then
  local parts = {}
  if type(source) == "string" and type(target) == "string" then
    table.insert(parts, "moved from " .. source .. " to " .. target)
  elseif text(field(condition(status, "Succeeded"), "message")) ~= "" then
    table.insert(parts, condition(status, "Succeeded").message)
  end
  local downtime = field(status, "downtimeMs")
  if type(downtime) == "number" then
    table.insert(parts, "downtime " .. show(downtime) .. " ms")
  end
  hs.status = "Healthy"
  hs.message = say(phase, table.concat(parts, ", "))
  return hs
end

if phase == "Failed" then
  local stalled = condition(status, "Stalled")
  hs.status = "Degraded"
  hs.message = why(field(status, "reason"), field(status, "message"),
    why(field(stalled, "reason"), field(stalled, "message"), "Failed"))
  return hs
end

-- Only the deletion of a Migration cancels it, and the VM stays where it was: asked for,
-- over, and nothing to repair.
if phase == "Cancelled" then
  hs.status = "Suspended"
  hs.message = say(phase, text(field(status, "message")))
  return hs
end

local stalled = condition(status, "Stalled")
if field(stalled, "status") == "True" then
  hs.status = "Degraded"
  hs.message = why(field(stalled, "reason"), field(stalled, "message"), "stalled")
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

if phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the controller to judge the Migration"
  return hs
end

if phase == "Pending" then
  local queued = condition(status, "Queued")
  local detail = ""
  if field(queued, "status") == "True" then
    detail = text(queued.message)
  end
  hs.status = "Progressing"
  hs.message = say(phase, detail)
  return hs
end

if phase == "Scheduling" or phase == "TargetReady" then
  hs.status = "Progressing"
  hs.message = say(phase, text(field(condition(status, "TargetScheduled"), "message")))
  return hs
end

if phase == "Running" then
  local parts = {}
  if type(source) == "string" and type(target) == "string" then
    table.insert(parts, "from " .. source .. " to " .. target)
  end
  local progress = field(status, "progress")
  local total, sent = field(progress, "dataTotalBytes"), field(progress, "dataProcessedBytes")
  if type(total) == "number" and type(sent) == "number" and total > 0 then
    local percent = 100 * sent / total
    percent = percent - percent % 1
    table.insert(parts, show(percent) .. "% of " .. show(total) .. " bytes sent")
  end
  if field(progress, "postCopy") == true then
    table.insert(parts, "post-copy")
  end
  hs.status = "Progressing"
  hs.message = say(phase, table.concat(parts, ", "))
  return hs
end

hs.status = "Unknown"
hs.message = "unknown phase " .. show(phase)
return hs

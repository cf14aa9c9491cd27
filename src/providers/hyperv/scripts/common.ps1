# Shared by every vm-backup Hyper-V script. Dot-sourced, never run on its own:
#   . (Join-Path $PSScriptRoot 'common.ps1')
#
# Contract with the Node side (src/providers/hyperv/runner.ts):
# - arguments arrive as ONE parameter, -ArgsJson <Base64 of UTF-8 JSON>; no value is ever parsed
#   as PowerShell code or as a parameter name;
# - the script writes exactly one JSON line to stdout, ASCII only:
#     {"result":...,"warnings":[...]}                    exit code 0
#     {"error":{"message":...,"category":...,...}}       exit code 1
# - every cmdlet is module-qualified (Hyper-V\Get-VM): VMware PowerCLI also exports Get-VM.

$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$ConfirmPreference = 'None'
# Windows PowerShell 5.1 serialises arrays that carry the extended Count property as
# {"value":[...],"Count":n}. Removing the type data restores plain JSON arrays.
Remove-TypeData -TypeName System.Array -ErrorAction SilentlyContinue

$script:VmbWarnings = New-Object System.Collections.Generic.List[string]

function Add-VmbWarning([string]$Text) {
    if ($Text) { $script:VmbWarnings.Add($Text) }
}

function Read-VmbArgs([string]$ArgsJson) {
    if ([string]::IsNullOrEmpty($ArgsJson)) { return New-Object psobject }
    if ($ArgsJson -notmatch '^[A-Za-z0-9+/]+={0,2}$') {
        throw (New-Object System.ArgumentException 'ArgsJson is not Base64')
    }
    $text = [System.Text.Encoding]::UTF8.GetString([System.Convert]::FromBase64String($ArgsJson))
    return (ConvertFrom-Json -InputObject $text)
}

function Get-VmbArg($ArgsObject, [string]$Name, [switch]$Optional) {
    $p = $ArgsObject.PSObject.Properties[$Name]
    if ($null -eq $p -or $null -eq $p.Value -or ([string]$p.Value) -eq '') {
        if ($Optional) { return $null }
        throw (New-Object System.ArgumentException "missing argument $Name")
    }
    return $p.Value
}

# Our names: vmbackup-<backupId>, the only snapshots and reference points these scripts act on.
function Assert-VmbBackupName([string]$Name, [string]$Field) {
    if ($Name -cnotmatch '^vmbackup-[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$') { throw (New-Object System.ArgumentException "$Field '$Name' is not vmbackup-<backupId>") }
    return $Name
}

# Our change-tracking records (reference points): vmbackup-<chain>-<backupId> (the chain: 8 hex
# digits of the host node's repository and host name), or the old-style vmbackup-<backupId>.
function Assert-VmbRecordName([string]$Name, [string]$Field) {
    if ($Name -cnotmatch '^vmbackup-([0-9a-f]{8}-)?[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$') { throw (New-Object System.ArgumentException "$Field '$Name' is not vmbackup-<chain>-<backupId>") }
    return $Name
}

function ConvertTo-VmbGuid($Value) {
    $g = [guid]::Empty
    if (-not [guid]::TryParse([string]$Value, [ref]$g)) {
        throw (New-Object System.ArgumentException "not a GUID: $Value")
    }
    return $g
}

# A property that only some Hyper-V versions have (CheckpointType arrived in 2016).
function Get-VmbProp($Object, [string]$Name) {
    if ($null -eq $Object) { return $null }
    $p = $Object.PSObject.Properties[$Name]
    if ($null -eq $p) { return $null }
    return $p.Value
}

# Enums become their names, nulls are dropped. Callers wrap the call in @() so that a single
# element stays an array.
function ConvertTo-VmbStringArray($Value) {
    $r = New-Object System.Collections.Generic.List[string]
    foreach ($i in @($Value)) { if ($null -ne $i) { $r.Add([string]$i) } }
    return $r.ToArray()
}

function ConvertTo-VmbIsoDate($Value) {
    if ($null -eq $Value) { return $null }
    return ([datetime]$Value).ToUniversalTime().ToString('o')
}

function ConvertTo-VmbNullableInt($Value) {
    if ($null -eq $Value) { return $null }
    return [long]$Value
}

function Get-VmbVm($ArgsObject) {
    $id = ConvertTo-VmbGuid (Get-VmbArg $ArgsObject 'VmId')
    return (Hyper-V\Get-VM -Id $id)
}

function Get-VmbVmState($Vm) {
    return [ordered]@{
        Id                         = [string]$Vm.Id
        Name                       = [string]$Vm.Name
        State                      = [string]$Vm.State
        Status                     = [string]$Vm.Status
        OperationalStatus          = @(ConvertTo-VmbStringArray $Vm.OperationalStatus)
        PrimaryOperationalStatus   = [string](Get-VmbProp $Vm 'PrimaryOperationalStatus')
        SecondaryOperationalStatus = [string](Get-VmbProp $Vm 'SecondaryOperationalStatus')
    }
}

function Test-VmbMerging($Vm) {
    return (@(ConvertTo-VmbStringArray $Vm.OperationalStatus) -contains 'MergingDisks')
}

# Wait (at most $Seconds) while Hyper-V merges a removed checkpoint into its parent.
# Returns the milliseconds waited and whether the merge is still running.
function Wait-VmbMerge([guid]$VmId, [int]$Seconds) {
    $sw = [System.Diagnostics.Stopwatch]::StartNew()
    $vm = Hyper-V\Get-VM -Id $VmId
    while ((Test-VmbMerging $vm) -and $sw.Elapsed.TotalSeconds -lt $Seconds) {
        Start-Sleep -Milliseconds 1000
        $vm = Hyper-V\Get-VM -Id $VmId
    }
    return [ordered]@{ waitedMs = [long]$sw.ElapsedMilliseconds; mergePending = [bool](Test-VmbMerging $vm); vm = $vm }
}

# Before a backup snapshot: an earlier one removed may still be merging (a new snapshot fails
# meanwhile), and a snapshot of the same name must not exist. Returns the VM as it is now.
function Get-VmbVmReadyForSnapshot([guid]$VmId, [string]$Name, [int]$WaitSeconds) {
    $vm = Hyper-V\Get-VM -Id $VmId
    $wait = Wait-VmbMerge $VmId $WaitSeconds
    if ($wait.mergePending) { throw (New-Object System.InvalidOperationException "VM '$($vm.Name)' is still merging disks after $WaitSeconds s; try again later") }
    $vm = $wait.vm
    if (@(Get-VmbCheckpoints $vm | Where-Object { $_.Name -ceq $Name }).Count -gt 0) { throw (New-Object System.InvalidOperationException "VM '$($vm.Name)' already has a checkpoint named $Name") }
    return $vm
}

function Get-VmbDrive($Drive) {
    return [ordered]@{
        Name               = [string]$Drive.Name
        Id                 = [string]$Drive.Id
        ControllerType     = [string]$Drive.ControllerType
        ControllerNumber   = [int]$Drive.ControllerNumber
        ControllerLocation = [int]$Drive.ControllerLocation
        Path               = [string]$Drive.Path
        DiskNumber         = ConvertTo-VmbNullableInt $Drive.DiskNumber
        SupportPersistentReservations = [bool](Get-VmbProp $Drive 'SupportPersistentReservations')
    }
}

function Get-VmbDrives($Vm) {
    $list = New-Object System.Collections.Generic.List[object]
    foreach ($d in @(Hyper-V\Get-VMHardDiskDrive -VM $Vm)) { if ($null -ne $d) { $list.Add((Get-VmbDrive $d)) } }
    return $list.ToArray()
}

function Get-VmbVhd([string]$Path) {
    try {
        $v = Hyper-V\Get-VHD -Path $Path
        return [ordered]@{
            Path           = [string]$v.Path
            VhdFormat      = [string]$v.VhdFormat
            VhdType        = [string]$v.VhdType
            FileSize       = [long]$v.FileSize
            Size           = [long]$v.Size
            ParentPath     = [string]$v.ParentPath
            DiskIdentifier = [string]$v.DiskIdentifier
            Attached       = [bool]$v.Attached
            Error          = $null
        }
    } catch {
        return [ordered]@{ Path = $Path; Error = [string]$_.Exception.Message }
    }
}

# Every checkpoint of a VM, including the Recovery ones backup products create and Hyper-V
# Manager hides.
function Get-VmbCheckpoints($Vm) {
    $seen = @{}
    $list = New-Object System.Collections.Generic.List[object]
    $all = @(Hyper-V\Get-VMSnapshot -VM $Vm)
    $recovery = @()
    try { $recovery = @(Hyper-V\Get-VMSnapshot -VM $Vm -SnapshotType Recovery) } catch { Add-VmbWarning ("Get-VMSnapshot -SnapshotType Recovery: " + $_.Exception.Message) }
    foreach ($s in ($all + $recovery)) {
        if ($null -eq $s) { continue }
        $key = [string]$s.Id
        if ($seen.ContainsKey($key)) { continue }
        $seen[$key] = $true
        $list.Add($s)
    }
    return $list.ToArray()
}

function Get-VmbCheckpointInfo($Snapshot) {
    return [ordered]@{
        Id                 = [string]$Snapshot.Id
        Name               = [string]$Snapshot.Name
        VMId               = [string]$Snapshot.VMId
        VMName             = [string]$Snapshot.VMName
        SnapshotType       = [string]$Snapshot.SnapshotType
        CreationTime       = ConvertTo-VmbIsoDate $Snapshot.CreationTime
        ParentCheckpointId = [string](Get-VmbProp $Snapshot 'ParentCheckpointId')
        Path               = [string]$Snapshot.Path
    }
}

function ConvertTo-VmbAsciiJson($Object) {
    # -InputObject keeps a one-element array an array (the pipeline would unroll it).
    $json = ConvertTo-Json -InputObject $Object -Depth 6 -Compress
    if ($null -eq $json) { $json = 'null' }
    # stdout stays ASCII whatever the console code page: every non-ASCII UTF-16 unit is escaped
    # (a surrogate pair becomes two escapes, as JSON wants).
    return [regex]::Replace($json, '[^\x00-\x7F]', { param($m) '\u{0:x4}' -f [int][char]$m.Value })
}

# The envelope is written by hand so that -Depth counts from the result itself.
function Write-VmbLine([string]$Key, $Value) {
    $line = '{"' + $Key + '":' + (ConvertTo-VmbAsciiJson $Value) + ',"warnings":' + (ConvertTo-VmbAsciiJson @($script:VmbWarnings.ToArray())) + '}'
    [Console]::Out.Write("`n" + $line + "`n")
    [Console]::Out.Flush()
}

function Write-VmbResult($Result) {
    Write-VmbLine 'result' $Result
    exit 0
}

function Write-VmbError($ErrorRecord) {
    $cmdlet = $null
    if ($ErrorRecord.InvocationInfo -and $ErrorRecord.InvocationInfo.MyCommand) { $cmdlet = [string]$ErrorRecord.InvocationInfo.MyCommand.Name }
    Write-VmbLine 'error' ([ordered]@{
        message               = [string]$ErrorRecord.Exception.Message
        category              = [string]$ErrorRecord.CategoryInfo.Category
        fullyQualifiedErrorId = [string]$ErrorRecord.FullyQualifiedErrorId
        cmdlet                = $cmdlet
        exceptionType         = [string]$ErrorRecord.Exception.GetType().FullName
    })
    exit 1
}

# ---------------------------------------------------------------------------------------------
# WMI (root/virtualization/v2): the Hyper-V classes backup products drive on Windows Server 2016+

$script:VmbNs = 'root/virtualization/v2'

function Get-VmbCimService([string]$ClassName) {
    $s = @(Get-CimInstance -Namespace $script:VmbNs -ClassName $ClassName)[0]
    if ($null -eq $s) { throw (New-Object System.NotSupportedException "$ClassName is not on this host (Hyper-V on Windows Server 2016 or later is needed)") }
    return $s
}

# Msvm_ComputerSystem.Name is the VM id; the id is a parsed GUID, so the filter holds no user text.
function Get-VmbComputerSystem([guid]$VmId) {
    $cs = @(Get-CimInstance -Namespace $script:VmbNs -ClassName 'Msvm_ComputerSystem' -Filter ("Name='" + $VmId.ToString() + "'"))[0]
    if ($null -eq $cs) { throw (New-Object System.InvalidOperationException "no virtual machine with id $VmId on $env:COMPUTERNAME") }
    return $cs
}

# The snapshot's Msvm_VirtualSystemSettingData (its ConfigurationID is the snapshot's id).
function Get-VmbSnapshotSettings($ComputerSystem, [guid]$SnapshotId) {
    foreach ($s in @(Get-CimAssociatedInstance -InputObject $ComputerSystem -Association 'Msvm_SnapshotOfVirtualSystem' -ResultClassName 'Msvm_VirtualSystemSettingData')) {
        if ($null -ne $s -and ([string]$s.ConfigurationID) -eq $SnapshotId.ToString()) { return $s }
    }
    return $null
}

# An embedded instance (what the *Settings string parameters take), as the sample of Microsoft's
# xHyper-VBackup module makes it: the CIM serializer's UTF-16 text.
function ConvertTo-VmbEmbeddedInstance($Instance) {
    $serializer = [Microsoft.Management.Infrastructure.Serialization.CimSerializer]::Create()
    $bytes = $serializer.Serialize($Instance, [Microsoft.Management.Infrastructure.Serialization.InstanceSerializationOptions]::None)
    return [System.Text.Encoding]::Unicode.GetString($bytes)
}

# A method's ReturnValue: 0 = done; 4096 = a Msvm_ConcreteJob runs it, polled to its end
# (JobState 7 = Completed). Anything else throws "<Method> returned <code>" or
# "<Method> job ended in state <s> with error code <c>": the Node side reads the numbers (the
# description text is in the host's language).
function Wait-VmbCimResult($Result, [string]$Method, [int]$TimeoutSeconds) {
    $rv = [int]$Result.ReturnValue
    if ($rv -eq 0) { return $null }
    if ($rv -ne 4096) { throw (New-Object System.InvalidOperationException "$Method returned $rv") }
    $job = $Result.Job | Get-CimInstance
    $sw = [System.Diagnostics.Stopwatch]::StartNew()
    while (@(2, 3, 4) -contains [int]$job.JobState) {
        if ($sw.Elapsed.TotalSeconds -gt $TimeoutSeconds) { throw (New-Object System.TimeoutException "$Method job still running after $TimeoutSeconds s") }
        Start-Sleep -Milliseconds 500
        $job = $job | Get-CimInstance
    }
    if ([int]$job.JobState -ne 7) {
        throw (New-Object System.InvalidOperationException ("$Method job ended in state " + [int]$job.JobState + " with error code " + [int]$job.ErrorCode + ': ' + [string]$job.ErrorDescription))
    }
    return $job
}

# The cluster node that owns a clustered VM (its "Virtual Machine" resource's VmID parameter), or
# $null when the VM is not clustered or the FailoverClusters module is absent.
function Get-VmbOwnerNode([guid]$VmId) {
    try {
        foreach ($r in @(FailoverClusters\Get-ClusterResource | Where-Object { $_.ResourceType -eq 'Virtual Machine' })) {
            $p = @(FailoverClusters\Get-ClusterParameter -InputObject $r -Name 'VmID' -ErrorAction SilentlyContinue)[0]
            if ($null -ne $p -and ([string]$p.Value) -eq $VmId.ToString()) { return [string]$r.OwnerNode }
        }
    } catch { }
    return $null
}

# A VM that is not on this node: gone, or (in a cluster) moved to another node. Never "gone" while
# the cluster still knows it: a merge reported done there would be a lie.
function Assert-VmbNotMoved([guid]$VmId) {
    $owner = Get-VmbOwnerNode $VmId
    if ($owner -and $owner -ne $env:COMPUTERNAME) {
        throw (New-Object System.InvalidOperationException "VM $VmId moved to cluster node $owner during the backup (this is $env:COMPUTERNAME)")
    }
}

function Get-VmbFileStamp([string]$Path) {
    $f = Get-Item -LiteralPath $Path
    return [ordered]@{ Path = [string]$f.FullName; Length = [long]$f.Length; LastWriteTimeUtc = ConvertTo-VmbIsoDate $f.LastWriteTimeUtc }
}

# Our map of reference points (their names are ours: vmbackup-<chain>-<backupId>; Hyper-V gives them
# only an InstanceID), kept beside the VM's configuration, so it moves with a clustered VM.
function Get-VmbReferencePointMapPath($Vm) {
    return (Join-Path (Join-Path ([string]$Vm.ConfigurationLocation) 'vm-backup') ([string]$Vm.Id + '.reference-points.json'))
}

function Read-VmbReferencePointMap($Vm) {
    $p = Get-VmbReferencePointMapPath $Vm
    if (-not (Test-Path -LiteralPath $p -PathType Leaf)) { return @() }
    return @((ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($p))).Entries)
}

function Write-VmbReferencePointMap($Vm, $Entries) {
    $p = Get-VmbReferencePointMapPath $Vm
    $dir = Split-Path -Parent $p
    if (-not (Test-Path -LiteralPath $dir -PathType Container)) { New-Item -ItemType Directory -Path $dir | Out-Null }
    $tmp = $p + '.new'
    [System.IO.File]::WriteAllText($tmp, (ConvertTo-Json -InputObject ([ordered]@{ VmId = [string]$Vm.Id; Entries = @($Entries) }) -Depth 5))
    if (Test-Path -LiteralPath $p -PathType Leaf) { [System.IO.File]::Replace($tmp, $p, $null) } else { [System.IO.File]::Move($tmp, $p) }
}

function Get-VmbReferencePoints($ComputerSystem) {
    return @(Get-CimAssociatedInstance -InputObject $ComputerSystem -Association 'Msvm_ReferencePointOfVirtualSystem' -ResultClassName 'Msvm_VirtualSystemReferencePoint' | Where-Object { $null -ne $_ })
}

function Get-VmbReferencePointInfo($Rp) {
    return [ordered]@{
        InstanceID                         = [string]$Rp.InstanceID
        ReferencePointType                 = [int]$Rp.ReferencePointType
        ConsistencyLevel                   = [int]$Rp.ConsistencyLevel
        VirtualDiskIdentifiers             = @(ConvertTo-VmbStringArray $Rp.VirtualDiskIdentifiers)
        ResilientChangeTrackingIdentifiers = @(ConvertTo-VmbStringArray $Rp.ResilientChangeTrackingIdentifiers)
    }
}

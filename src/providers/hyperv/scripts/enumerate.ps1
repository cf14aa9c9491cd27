# Read-only: the facts about every VM of the host that the classification rules need.
# Raw cmdlet properties only (enums as names, dates as ISO 8601); the Node side maps them.
# Args (ArgsJson): { VmId?: guid }  -- only that VM when given
param([string]$ArgsJson)
. (Join-Path $PSScriptRoot 'common.ps1')

function Resolve-VmbVolume([string]$Path, $Cache) {
    if ([string]::IsNullOrEmpty($Path) -or $Cache.ContainsKey($Path)) { return }
    $entry = [ordered]@{ Path = $Path; Root = $null; UniqueId = $null; DriveLetter = $null; FileSystem = $null; Error = $null }
    try { $entry.Root = [string][System.IO.Path]::GetPathRoot($Path) } catch { }
    try {
        $v = @(Storage\Get-Volume -FilePath $Path)[0]
        $entry.UniqueId = [string]$v.UniqueId
        $entry.DriveLetter = [string]$v.DriveLetter
        $entry.FileSystem = [string]$v.FileSystem
    } catch {
        $entry.Error = [string]$_.Exception.Message
    }
    $Cache[$Path] = $entry
}

$out = $null
try {
    $a = Read-VmbArgs $ArgsJson
    $only = Get-VmbArg $a 'VmId' -Optional
    if ($only) { $vms = @(Hyper-V\Get-VM -Id (ConvertTo-VmbGuid $only)) } else { $vms = @(Hyper-V\Get-VM) }

    # Msvm_ComputerSystem.Name is the VM id; read them all once instead of one query per VM.
    $systems = @{}
    $kvpError = $null
    try {
        foreach ($cs in @(Get-CimInstance -Namespace 'root/virtualization/v2' -ClassName 'Msvm_ComputerSystem')) {
            $systems[[string]$cs.Name] = $cs
        }
    } catch { $kvpError = 'Msvm_ComputerSystem: ' + $_.Exception.Message }

    # Windows Server 2016+ has the WMI recovery snapshots and reference points; 2012 R2 has not
    $recoverySnapshots = $false
    try { $recoverySnapshots = ($null -ne (Get-CimClass -Namespace $script:VmbNs -ClassName 'Msvm_VirtualSystemSnapshotSettingData' -ErrorAction Stop)) } catch { }
    $os = $null
    try { $os = @(Get-CimInstance -ClassName 'Win32_OperatingSystem')[0] } catch { }

    $volumes = @{}
    $list = New-Object System.Collections.Generic.List[object]
    foreach ($vm in $vms) {
        if ($null -eq $vm) { continue }
        $errors = New-Object System.Collections.Generic.List[string]
        $vmInfo = Get-VmbVmState $vm
        $vmInfo.Generation = [int]$vm.Generation
        $vmInfo.Version = [string]$vm.Version
        $vmInfo.CheckpointType = [string](Get-VmbProp $vm 'CheckpointType')
        $vmInfo.SnapshotFileLocation = [string](Get-VmbProp $vm 'SnapshotFileLocation')
        $vmInfo.CheckpointFileLocation = [string](Get-VmbProp $vm 'CheckpointFileLocation')
        $vmInfo.ConfigurationLocation = [string]$vm.ConfigurationLocation
        $vmInfo.Path = [string]$vm.Path
        $vmInfo.IntegrationServicesVersion = [string]$vm.IntegrationServicesVersion
        $vmInfo.IsClustered = [bool]$vm.IsClustered
        $vmInfo.ReplicationState = [string](Get-VmbProp $vm 'ReplicationState')
        $vmInfo.OwnerNode = $null
        if ($vm.IsClustered) { $vmInfo.OwnerNode = Get-VmbOwnerNode $vm.Id }

        $services = @()
        try {
            $services = @(Hyper-V\Get-VMIntegrationService -VM $vm | Where-Object { $null -ne $_ } | ForEach-Object {
                [ordered]@{
                    Name                       = [string]$_.Name
                    Id                         = [string]$_.Id
                    Enabled                    = [bool]$_.Enabled
                    PrimaryStatusDescription   = [string]$_.PrimaryStatusDescription
                    SecondaryStatusDescription = [string]$_.SecondaryStatusDescription
                    OperationalStatus          = @(ConvertTo-VmbStringArray $_.OperationalStatus)
                }
            })
        } catch { $errors.Add('Get-VMIntegrationService: ' + $_.Exception.Message) }

        $drives = @()
        try { $drives = @(Get-VmbDrives $vm) } catch { $errors.Add('Get-VMHardDiskDrive: ' + $_.Exception.Message) }

        $vhds = New-Object System.Collections.Generic.List[object]
        foreach ($d in $drives) {
            if ($null -ne $d.DiskNumber -or [string]::IsNullOrEmpty($d.Path)) { continue }
            $vhds.Add((Get-VmbVhd $d.Path))
            Resolve-VmbVolume $d.Path $volumes
        }
        $snapshotDir = $vmInfo.SnapshotFileLocation
        if (-not $snapshotDir) { $snapshotDir = $vmInfo.CheckpointFileLocation }
        Resolve-VmbVolume $snapshotDir $volumes

        $checkpoints = @()
        try { $checkpoints = @(Get-VmbCheckpoints $vm | ForEach-Object { Get-VmbCheckpointInfo $_ }) } catch { $errors.Add('Get-VMSnapshot: ' + $_.Exception.Message) }

        # RCT: the VM's reference points, our names for them, and whether each disk's RCT id is
        # still valid (GetVirtualDiskChanges over the first MiB: an id reset by a storage move or
        # a disk replaced fails)
        $refPoints = @()
        $refMap = @()
        $probes = New-Object System.Collections.Generic.List[object]
        if ($recoverySnapshots -and $systems.ContainsKey([string]$vm.Id)) {
            try {
                $refPoints = @(Get-VmbReferencePoints $systems[[string]$vm.Id] | ForEach-Object { Get-VmbReferencePointInfo $_ })
                $refMap = @(Read-VmbReferencePointMap $vm | ForEach-Object { [ordered]@{ Name = [string]$_.Name; InstanceID = [string]$_.InstanceID; CreatedAt = [string]$_.CreatedAt; Host = [string]$_.Host } })
                $ims = $null
                foreach ($e in $refMap) {
                    $rp = @($refPoints | Where-Object { $_.InstanceID -eq $e.InstanceID })[0]
                    if ($null -eq $rp) { continue }
                    for ($i = 0; $i -lt $rp.ResilientChangeTrackingIdentifiers.Count; $i++) {
                        $vdId = [string]$rp.VirtualDiskIdentifiers[$i]
                        $drive = @($drives | Where-Object { $_.Id -and ($_.Id -replace '\\[A-Z]$', '') -eq ($vdId -replace '\\[A-Z]$', '') })[0]
                        $probe = [ordered]@{ Name = $e.Name; VirtualDiskIdentifier = $vdId; Valid = $false; Error = $null }
                        if ($null -eq $drive -or -not $drive.Path) { $probe.Error = 'no disk of the VM has this identifier now'; $probes.Add($probe); continue }
                        try {
                            if ($null -eq $ims) { $ims = Get-VmbCimService 'Msvm_ImageManagementService' }
                            $r = Invoke-CimMethod -InputObject $ims -MethodName 'GetVirtualDiskChanges' -Arguments @{ Path = $drive.Path; LimitId = [string]$rp.ResilientChangeTrackingIdentifiers[$i]; TargetSnapshotId = ''; ByteOffset = [uint64]0; ByteLength = [uint64]1MB }
                            Wait-VmbCimResult $r 'GetVirtualDiskChanges' 60 | Out-Null
                            $probe.Valid = $true
                        } catch { $probe.Error = [string]$_.Exception.Message }
                        $probes.Add($probe)
                    }
                }
            } catch { $errors.Add('reference points: ' + $_.Exception.Message) }
        }

        $intrinsic = @()
        $guestItems = @()
        if ($kvpError) {
            $errors.Add($kvpError)
        } elseif ($systems.ContainsKey([string]$vm.Id)) {
            try {
                $kvp = @(Get-CimAssociatedInstance -InputObject $systems[[string]$vm.Id] -ResultClassName 'Msvm_KvpExchangeComponent')[0]
                if ($null -ne $kvp) {
                    $intrinsic = @(ConvertTo-VmbStringArray $kvp.GuestIntrinsicExchangeItems)
                    $guestItems = @(ConvertTo-VmbStringArray $kvp.GuestExchangeItems)
                }
            } catch { $errors.Add('Msvm_KvpExchangeComponent: ' + $_.Exception.Message) }
        }

        $list.Add([ordered]@{
            VM                  = $vmInfo
            IntegrationServices = @($services)
            HardDrives          = @($drives)
            Vhds                = @($vhds.ToArray())
            Checkpoints         = @($checkpoints)
            KvpIntrinsic        = @($intrinsic)
            KvpGuest            = @($guestItems)
            ReferencePoints     = @($refPoints)
            ReferencePointMap   = @($refMap)
            RctProbes           = @($probes.ToArray())
            Errors              = @($errors.ToArray())
        })
    }
    $out = [ordered]@{
        Host    = [ordered]@{
            ComputerName      = [string]$env:COMPUTERNAME
            PSVersion         = [string]$PSVersionTable.PSVersion
            OsCaption         = $(if ($os) { [string]$os.Caption } else { $null })
            OsVersion         = $(if ($os) { [string]$os.Version } else { $null })
            OemCodePage       = [int][System.Globalization.CultureInfo]::CurrentCulture.TextInfo.OEMCodePage
            RecoverySnapshots = $recoverySnapshots
        }
        Vms     = @($list.ToArray())
        Volumes = @($volumes.Values)
    }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out

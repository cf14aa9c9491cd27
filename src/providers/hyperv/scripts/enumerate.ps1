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
            Errors              = @($errors.ToArray())
        })
    }
    $out = [ordered]@{
        Host    = [ordered]@{ ComputerName = [string]$env:COMPUTERNAME; PSVersion = [string]$PSVersionTable.PSVersion }
        Vms     = @($list.ToArray())
        Volumes = @($volumes.Values)
    }
} catch {
    Write-VmbError $_
}
Write-VmbResult $out
